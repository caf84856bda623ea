"""3DGS trainer: python main.py {fit,validate,test,predict} --config configs/... --data.path DATA -n NAME"""

import os

# GNU OpenMP's idle threads spin at barriers by default; when anything else wants the cores (a second
# training process, a data thread, another job) that made our 2-thread rasterizer 3x slower than 1
# thread (BENCHMARKS.md, bench/raster.py). Must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Nothing is downloaded at run time (SDS reads a local model folder with local_files_only=True). With
# the optional extra installed, lightning's torchmetrics imports transformers and so huggingface_hub,
# which reads this once at import: set it before anything is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from internal.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
