"""Quality on real scenes: train with main.py, then measure held-out views, and report wall time.

    .venv/bin/python bench/quality.py lego400 --steps 7000        # test PSNR/SSIM over the 50 test views
    .venv/bin/python bench/quality.py lego400 --steps 1000 --split val
    .venv/bin/python bench/quality.py statue --steps 7000          # validation PSNR + a contact sheet PNG
    .venv/bin/python bench/quality.py lego400-3dgs --steps 30000 --checkpoint_every 1000 [--resume]

Scenes come from ../shared/data (or $GS_SHARED_DATA). Each run trains in its own experiment folder
(outputs/bench-<scene>-<steps>) through the real CLI, so what is measured is what users run. Printed:
fit wall time, final Gaussian count, mean PSNR/SSIM of the split; --json appends a record.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))
SCENES = {
    "lego400": (["configs/blender.yaml", "configs/cpu_fast.yaml"], "nerf_synthetic_lego_400", "test"),
    # The full 3DGS recipe (densify until 15k, opacity reset every 3k, no cap), for the 30k-step figure.
    "lego400-3dgs": (["configs/blender.yaml"], "nerf_synthetic_lego_400", "test"),
    "lego800": (["configs/blender.yaml", "configs/cpu_fast.yaml"], "nerf_synthetic_lego_800_train", "val"),
    "statue": (["configs/colmap.yaml", "configs/cpu_fast.yaml"], "colmap_statue_23", "val"),
    "demo": (["configs/blender.yaml", "configs/demo.yaml"], None, "test"),
}


def read_mean(path: Path) -> dict:
    rows = list(csv.DictReader(open(path)))
    return {k: float(v) for k, v in rows[-1].items() if k != "image" and v} | {"images": len(rows) - 1}


def contact_sheet(render_dir: Path, out: Path, limit: int = 8) -> Path:
    """Renders (top row) over ground truth (bottom row), each scaled to 256 px high."""
    renders = sorted(render_dir.glob("*_render.png"))[:limit]
    cols = []
    for r in renders:
        pair = [Image.open(r).convert("RGB"), Image.open(str(r).replace("_render.png", "_gt.png")).convert("RGB")]
        pair = [im.resize((round(im.width * 256 / im.height), 256)) for im in pair]
        cols.append(np.concatenate([np.asarray(p) for p in pair], axis=0))
    Image.fromarray(np.concatenate(cols, axis=1)).save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", choices=sorted(SCENES))
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--split", choices=["val", "test"], default=None, help="held-out split to measure (default per scene)")
    ap.add_argument("--output", default="outputs")
    ap.add_argument("--tag", default="", help="appended to the experiment name (bench-<scene>-<steps>-<tag>), to run variants side by side")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    ap.add_argument("--resume", action="store_true",
                    help="continue the experiment from its last.ckpt (a long run split over sessions; pass "
                         "--checkpoint_every N on the first run); fit_wall_s then covers this part only")
    args, extra = ap.parse_known_args()  # anything else is passed on to main.py fit
    configs, folder, split = SCENES[args.scene]
    split = args.split or split
    if folder is None:
        data = REPO / "demo_data" / "blender"
        if not data.exists():
            subprocess.run([sys.executable, "-m", "internal.demo_scene", str(REPO / "demo_data")], cwd=REPO, check=True)
    else:
        data = DATA / folder
        if not data.exists():
            sys.exit(f"skip: {data} not found (set GS_SHARED_DATA)")
    name = f"bench-{args.scene}-{args.steps}" + (f"-{args.tag}" if args.tag else "")
    s = args.steps
    cmd = [sys.executable, "main.py", "fit"] + sum((["--config", c] for c in configs), []) + [
        "--data.path", str(data), "-n", name, "--output", args.output,
        "--trainer.max_steps", str(s), "--trainer.val_check_interval", str(s), "--save_steps", f"[{s}]",
        "--model.optimization.means_lr_max_steps", str(max(s, 7000)),
        "--trainer.enable_progress_bar", "false",
    ] + (["--ckpt_path", "last"] if args.resume else []) + extra
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    fit_s = time.time() - t0
    exp = REPO / args.output / name
    if split == "test":
        subprocess.run([sys.executable, "main.py", "test", "--config", str(exp / "config.yaml"), "--ckpt_path", "last",
                        "--trainer.enable_progress_bar", "false"], cwd=REPO, check=True)
    mean = read_mean(exp / "metrics" / f"{split}-step={s}.csv")
    import torch

    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    n = int(ckpt["state_dict"]["gaussians.means"].shape[0])
    sheet = contact_sheet(exp / "renders" / f"{split}-step={s}", exp / f"contact_sheet_{split}.png")
    rec = {"scene": args.scene, "steps": s, "name": name, "options": extra, "split": split, "fit_wall_s": round(fit_s, 1), "gaussians": n,
           "psnr": round(mean["psnr"], 3), "ssim": round(mean["ssim"], 4), "images": mean["images"],
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "contact_sheet": str(sheet),
           "resumed": args.resume}
    print(json.dumps(rec))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
