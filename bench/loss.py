"""Benchmark: the training loss (1-λ)·L1 + λ·(1-SSIM), forward+backward, fused native kernel
(internal/loss.py, csrc/loss.cpp) against the torch path (metrics.l1 + metrics.ssim through autograd),
side by side in one run.

    .venv/bin/python bench/loss.py                   # 400x400 and 800x800 RGB, with and without a mask
    .venv/bin/python bench/loss.py --sizes 400 --repeats 15

Both are first checked to agree (value and gradient). Times are medians of --repeats runs, the two
alternating; the fused kernel is timed at every x86-64 level this CPU runs. Prints wall time and the
main thread's CPU time (less distorted by other jobs on the machine) and the torch/fused ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from internal import loss as loss_mod  # noqa: E402


def fwd_bwd(pred, gt, mask, fused: bool) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    p = pred.clone().requires_grad_(True)
    t, c = time.perf_counter(), time.thread_time()
    value = loss_mod.photometric_loss(p, gt, mask, 0.2, fused=fused)
    value.backward()
    return time.perf_counter() - t, time.thread_time() - c, value.detach(), p.grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 800])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    if not loss_mod.native_available():
        sys.exit("error: the native extension (with its loss kernel) is not built: run scripts/setup.sh")
    import cpu_rasterizer

    levels = cpu_rasterizer.available_levels()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, levels {levels}, load {os.getloadavg()[0]:.2f}")
    saved = loss_mod._native
    for s in args.sizes:
        for masked in (False, True):
            g = torch.Generator().manual_seed(s)
            gt = torch.rand(s, s, 3, generator=g)
            pred = (gt + 0.1 * torch.randn(s, s, 3, generator=g)).clamp(0, 1)
            mask = (torch.rand(s, s, generator=g) > 0.2) if masked else None
            _, _, v0, g0 = fwd_bwd(pred, gt, mask, False)
            _, _, v1, g1 = fwd_bwd(pred, gt, mask, True)
            torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-9)
            times = {"torch": []} | {lv: [] for lv in levels}
            for _ in range(args.repeats):
                for name in times:
                    if name == "torch":
                        times[name].append(fwd_bwd(pred, gt, mask, False)[:2])
                    else:
                        loss_mod._native = cpu_rasterizer.load(name)
                        times[name].append(fwd_bwd(pred, gt, mask, True)[:2])
                        loss_mod._native = saved
            med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
            ref = med["torch"]
            row = ", ".join(f"{k} {1000 * w:.1f} ms ({1000 * c:.1f} CPU, {ref[0] / w:.2f}x)" for k, (w, c) in med.items())
            print(f"{s}x{s}{' masked' if masked else ''}: {row}", flush=True)


if __name__ == "__main__":
    main()
