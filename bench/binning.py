"""How many (tile, Gaussian) pairs the native compositor bins, and what compositing costs, on a real checkpoint.

    .venv/bin/python bench/binning.py outputs/bench-lego400-7000              # 10 training views
    .venv/bin/python bench/binning.py EXP --views 15 --repeats 2 --threads 1

EXP is an experiment folder of `main.py fit` (checkpoints/last.ckpt and cameras.json). For each view (every
k-th camera of cameras.json) the checkpoint's Gaussians are projected with the native kernels, then:

- pairs: the tiles of each Gaussian's radius square (docs/rasterizer.md's tile rectangle), the tiles of the
  bounding box of its alpha >= 1/255 ellipse (opacity-aware: |d| <= sqrt(2 ln(255 o)) sigma), and the pairs the
  extension actually binned (the length of its tile lists, from composite_forward's saved state);
- time: composite forward and backward (4 feature channels, loss = sum(render^2) + sum(alpha)), median over
  views x repeats of the thread CPU time (time.thread_time: with --threads 1 other jobs on the machine barely
  inflate it) and of the wall time.
Run it with each build (e.g. an old tree's venv) to compare them side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internal.rasterize import native  # noqa: E402
from internal.rasterize.projection import tile_bounds  # noqa: E402


def load(exp: Path):
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    g = {k.split(".", 1)[1]: v for k, v in ckpt.items() if k.startswith("gaussians.")}
    n = g["means"].shape[0]
    return (g["means"].float(), torch.nn.functional.normalize(g["quats"], dim=-1), torch.exp(g["scales"]),
            torch.sigmoid(g["opacities"]).reshape(n))


def view(cam: dict):
    rot, pos = torch.tensor(cam["rotation"]), torch.tensor(cam["position"])
    vm = torch.eye(4)
    vm[:3, :3] = rot.T
    vm[:3, 3] = -rot.T @ pos
    w, h = cam["width"], cam["height"]
    k = torch.tensor([[cam["fx"], 0.0, w / 2], [0.0, cam["fy"], h / 2], [0.0, 0.0, 1.0]])
    return vm[None], k[None], w, h


def rect_tiles(x0, x1, y0, y1):
    return int(((x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    means, quats, scales, opac = load(args.experiment)
    cams = json.load(open(args.experiment / "cameras.json"))
    picks = cams[:: max(1, len(cams) // args.views)][: args.views]
    gen = torch.Generator().manual_seed(0)
    square = box = binned = 0
    fwd, bwd, fwd_wall, bwd_wall = [], [], [], []
    for cam in picks:
        vm, k, w, h = view(cam)
        m2d, conics, depths, radii = native.project_gaussians(means, quats, scales, vm, k, w, h)
        # The opacity-aware ellipse's bounding box, cut to the square (float64; what footprint_tiles bins by,
        # without its slack).
        a, b, c = (conics[0, :, i].double() for i in range(3))
        tau = torch.log(255.0 * opac.double()).clamp_min(0.0)
        det = a * c - b * b
        ex, ey = (2 * tau * c / det).sqrt(), (2 * tau * a / det).sqrt()
        mx, my = m2d[0, :, 0].double(), m2d[0, :, 1].double()
        sx0, sx1, sy0, sy1 = (t[0] for t in tile_bounds(m2d, radii, w, h))
        square += rect_tiles(sx0, sx1, sy0, sy1)
        x0 = torch.maximum(torch.floor((mx - ex) / 16).long(), sx0)
        x1 = torch.minimum(torch.floor((mx + ex) / 16).long() + 1, sx1)
        y0 = torch.maximum(torch.floor((my - ey) / 16).long(), sy0)
        y1 = torch.minimum(torch.floor((my + ey) / 16).long() + 1, sy1)
        ok = (radii[0] > 0) & (opac >= 1.0 / 255.0)
        box += rect_tiles(x0[ok], x1[ok], y0[ok], y1[ok])
        feats = torch.rand(1, means.shape[0], 4, generator=gen)
        out = native._C.composite_forward(m2d.detach(), conics.detach(), feats, opac, depths.detach(), radii, w, h, 16)
        binned += out[5].numel()  # [render, alpha, last, t_final, tile_offsets, isect, ...]
        for _ in range(args.repeats):
            leaves = [t.detach().clone().requires_grad_() for t in (m2d, conics, feats, opac)]
            t0, w0 = time.thread_time(), time.perf_counter()
            render, alpha = native.composite(*leaves, depths.detach(), radii, w, h)
            t1, w1 = time.thread_time(), time.perf_counter()
            loss = (render * render).sum() + alpha.sum()
            t2, w2 = time.thread_time(), time.perf_counter()
            loss.backward()
            t3, w3 = time.thread_time(), time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
            fwd_wall.append(w1 - w0)
            bwd_wall.append(w3 - w2)
    med = lambda v: 1e3 * statistics.median(v)  # noqa: E731
    import cpu_rasterizer

    rec = {"experiment": str(args.experiment), "gaussians": int(means.shape[0]), "views": len(picks),
           "threads": args.threads, "module": Path(native._C.__file__).name, "package": str(Path(cpu_rasterizer.__file__).parent),
           "pairs_square": square, "pairs_box": box, "pairs_binned": binned,
           "fwd_cpu_ms": round(med(fwd), 2), "bwd_cpu_ms": round(med(bwd), 2),
           "fwd_wall_ms": round(med(fwd_wall), 2), "bwd_wall_ms": round(med(bwd_wall), 2)}
    print(f"{rec['module']} ({rec['package']}): {len(picks)} views, {rec['gaussians']} Gaussians, {args.threads} thread(s)")
    print(f"pairs: radius squares {square:,}, opacity-aware boxes {box:,} ({box / square:.2f}), binned {binned:,} "
          f"({binned / square:.2f})")
    print(f"composite forward {rec['fwd_cpu_ms']} ms CPU ({rec['fwd_wall_ms']} wall), backward {rec['bwd_cpu_ms']} ms CPU "
          f"({rec['bwd_wall_ms']} wall), medians of {len(fwd)}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
