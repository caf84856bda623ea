"""Benchmark: the training loss's SSIM (internal/metrics.py: in-place separable blur, closed-form backward)
against the same SSIM through plain autograd, forward+backward, side by side in one run.

    .venv/bin/python bench/ssim.py                   # 400x400 and 800x800 RGB, torch's thread count
    .venv/bin/python bench/ssim.py --sizes 400 --repeats 9

The autograd version is the textbook formula with the Gaussian blur as a depthwise conv2d, written here
independently; the script first checks that both give the same value and gradient. Times are medians
of --repeats runs, the two versions alternating.
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
import torch.nn.functional as F  # noqa: E402

from internal import metrics  # noqa: E402


def autograd_ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    x, y = pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]
    c = x.shape[1]
    r = metrics.SSIM_WINDOW // 2
    t = torch.arange(metrics.SSIM_WINDOW, dtype=x.dtype) - r
    g = torch.exp(-(t**2) / (2 * metrics.SSIM_SIGMA**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(5 * c, 1, -1, -1)
    m = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], 1), k, padding=r, groups=5 * c)
    mx, my, exx, eyy, exy = m.split(c, 1)
    num = (2 * mx * my + metrics.SSIM_C1) * (2 * (exy - mx * my) + metrics.SSIM_C2)
    den = (mx * mx + my * my + metrics.SSIM_C1) * (exx - mx * mx + eyy - my * my + metrics.SSIM_C2)
    return (num / den).mean()


def time_fwd_bwd(fn, pred, gt) -> float:
    p = pred.clone().requires_grad_(True)
    t = time.perf_counter()
    fn(p, gt).backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 800])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    ours = lambda a, b: metrics.ssim(a, b)  # noqa: E731
    for s in args.sizes:
        gen = torch.Generator().manual_seed(s)
        gt = torch.rand(s, s, 3, generator=gen)
        pred = (gt + 0.1 * torch.randn(s, s, 3, generator=gen)).clamp(0, 1)
        a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        va, vb = ours(a, gt), autograd_ssim(b, gt)
        va.backward()
        vb.backward()
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-9)
        for fn in (ours, autograd_ssim):  # warm-up
            time_fwd_bwd(fn, pred, gt)
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t_ours.append(time_fwd_bwd(ours, pred, gt))
            t_ref.append(time_fwd_bwd(autograd_ssim, pred, gt))
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        print(f"{s}x{s} RGB forward+backward: ours {1000 * mo:.1f} ms, autograd (conv2d blur) {1000 * mr:.1f} ms: "
              f"{mr / mo:.1f}x (medians of {args.repeats}; value and gradient agree)")


if __name__ == "__main__":
    main()
