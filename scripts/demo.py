"""The README's first command (`make demo`): train the embedded demo scene end to end.

1. generates the demo scene (analytic, ray-cast textured shapes; internal/demo_scene.py) into demo_data/
2. trains it:  main.py fit --config configs/blender.yaml --config configs/demo.yaml --data.path demo_data/blender -n demo
3. tests it:   main.py test --config outputs/demo/config.yaml --ckpt_path last
and prints the test PSNR and where the checkpoint, the PLY and the renders are.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo_data", help="where the demo scene is written")
    ap.add_argument("--output", default="outputs", help="experiment folders")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    args, extra = ap.parse_known_args()
    t0 = time.time()
    py = sys.executable
    data = REPO / args.data
    if not (data / "blender" / "transforms_train.json").is_file():
        run([py, "-m", "internal.demo_scene", str(data)])
    fit = [py, "main.py", "fit", "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
           "--data.path", str(data / "blender"), "-n", args.name, "--output", args.output]
    if args.steps:
        fit += ["--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps),
                "--save_steps", f"[{args.steps}]"]
    run(fit + extra)
    exp = REPO / args.output / args.name
    run([py, "main.py", "test", "--config", str(exp / "config.yaml"), "--ckpt_path", "last"])
    tests = sorted((exp / "metrics").glob("test-step=*.csv"), key=lambda p: p.stat().st_mtime)
    psnr = None
    if tests:
        rows = list(csv.DictReader(open(tests[-1])))
        psnr = next(float(r["psnr"]) for r in rows if r["image"] == "MEAN")
    plys = sorted((exp / "point_cloud").glob("iteration_*/point_cloud.ply"), key=lambda p: int(p.parent.name.split("_")[1]))
    renders = sorted((exp / "renders").glob("test-step=*"), key=lambda p: p.stat().st_mtime)
    print()
    print(f"demo finished in {time.time() - t0:.0f} s")
    print(f"  test PSNR:   {psnr:.2f} dB" if psnr is not None else "  test PSNR:   (no test metrics found)")
    print(f"  checkpoint:  {exp / 'checkpoints' / 'last.ckpt'}")
    print(f"  point cloud: {plys[-1] if plys else '(none)'}")
    print(f"  renders:     {renders[-1] if renders else '(none)'}")
    print(f"  metrics:     {tests[-1] if tests else '(none)'}")


if __name__ == "__main__":
    main()
