"""3DGS trainer: python main.py {fit,validate,test,predict} --config configs/... --data.path DATA -n NAME"""

import os

# GNU OpenMP's idle threads spin at barriers by default; when anything else wants the cores (a second
# training process, a data thread, another job) that made our 2-thread rasterizer 3x slower than 1
# thread (BENCHMARKS.md, bench/raster.py). Must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from internal.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
