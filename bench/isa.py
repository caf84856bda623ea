"""The cpu rasterizer's compiled levels side by side: is the portable build as fast as -march=native?

    .venv/bin/python bench/isa.py                          # garden, every level this CPU runs
    .venv/bin/python bench/isa.py --scenes garden,large --repeats 7

The extension is compiled once per x86-64 level (submodules/cpu_rasterizer/setup.py) and the best one
the CPU supports is used. To compare against a -march=native build of the same sources, build that too:

    CPU_RASTERIZER_LEVELS=x86-64,x86-64-v3,x86-64-v4,native \\
        .venv/bin/pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer

What is timed is bench/raster.py's: the whole rasterize() forward, and forward + backward, per camera, with
the levels interleaved call by call (level A camera 0, level B camera 0, ...) so that the load of this
shared machine falls on all of them alike. Printed per level: median wall and CPU milliseconds, and the
ratio of each level's median to the first level's (default: native when built, else the selected one).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cpu_rasterizer  # noqa: E402

from internal.rasterize import native  # noqa: E402
from raster import SCENES, leaf_params, loss_weights, render  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="garden", help="comma-separated: garden, large")
    ap.add_argument("--levels", default=None, help="comma-separated levels (default: native if built, then all this CPU runs)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per camera and level (median reported)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.levels:
        levels = args.levels.split(",")
    else:
        levels = (["native"] if cpu_rasterizer._built("native") else []) + cpu_rasterizer.available_levels()[::-1]
    modules = {lv: cpu_rasterizer.load(lv) for lv in levels}
    print(f"{cpu_model()}; threads {torch.get_num_threads()} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); "
          f"selected level {cpu_rasterizer.ISA}; levels {', '.join(levels)}; load {os.getloadavg()[0]:.1f}")
    for name in args.scenes.split(","):
        scene = SCENES[name]()
        n_cam = scene["viewmats"].shape[0]
        w_rgb, w_alpha = loss_weights(scene)
        samples = {lv: {"fwd": [], "fwdbwd": [], "cpu_fwd": [], "cpu_fwdbwd": []} for lv in levels}
        print(f"\n== {name}: {scene['means'].shape[0]:,} Gaussians, {n_cam} cameras {scene['width']}x{scene['height']}")
        saved = native._C
        try:
            for rep in range(args.repeats + 1):  # the first round warms up every level and is dropped
                for cam in range(n_cam):
                    for lv in levels:
                        native._C = modules[lv]
                        params = leaf_params(scene)
                        t0, c0 = time.perf_counter(), time.process_time()
                        out = render(scene, cam, "cpu", params)
                        t1, c1 = time.perf_counter(), time.process_time()
                        ((out.colors * w_rgb).sum() + (out.alphas * w_alpha).sum()).backward()
                        t2, c2 = time.perf_counter(), time.process_time()
                        if rep:
                            s = samples[lv]
                            s["fwd"].append(t1 - t0)
                            s["fwdbwd"].append(t2 - t0)
                            s["cpu_fwd"].append(c1 - c0)
                            s["cpu_fwdbwd"].append(c2 - c0)
        finally:
            native._C = saved
        med = {lv: {k: 1e3 * statistics.median(v) for k, v in s.items()} for lv, s in samples.items()}
        base = levels[0]
        for lv in levels:
            m, b = med[lv], med[base]
            print(f"   {lv:10s} forward {m['fwd']:8.1f} ms (cpu {m['cpu_fwd']:6.1f})  fwd+bwd {m['fwdbwd']:8.1f} ms "
                  f"(cpu {m['cpu_fwdbwd']:6.1f})   vs {base}: forward {m['fwd'] / b['fwd']:.2f}x, fwd+bwd "
                  f"{m['fwdbwd'] / b['fwdbwd']:.2f}x (cpu {m['cpu_fwd'] / b['cpu_fwd']:.2f}x, {m['cpu_fwdbwd'] / b['cpu_fwdbwd']:.2f}x)"
                  f"  [{len(samples[lv]['fwd'])} samples]")


if __name__ == "__main__":
    main()
