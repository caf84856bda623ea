"""Image metrics: PSNR, SSIM (also the training loss's structural term), LPIPS where it can be computed.

Images are float tensors in [0,1], (H,W,3) or (B,H,W,3); masks are bool (H,W) / (B,H,W), True = counted.
SSIM is the usual Gaussian-window SSIM (11x11, sigma 1.5, K1 = 0.01, K2 = 0.03) with zero padding at
the border, as the 3DGS papers compute it; under a mask the SSIM map is averaged over the kept pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _batched(x: Tensor) -> Tensor:
    return x[None] if x.dim() == 3 else x


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B,H,W[,C]) x over pixels where mask (B,H,W) is True."""
    if mask is None:
        return x.mean()
    m = _batched(mask[..., None]) if mask.dim() == 2 else mask[..., None]
    m = m.to(x.dtype)
    if x.dim() == 3:
        m = m[..., 0]
    denom = m.sum() * (x.shape[-1] if x.dim() == 4 else 1)
    return (x * m).sum() / denom.clamp_min(1.0)


def l1(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    return _masked_mean((_batched(pred) - _batched(gt)).abs(), mask)


def mse(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    return _masked_mean((_batched(pred) - _batched(gt)) ** 2, mask)


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0,1]."""
    return -10.0 * torch.log10(mse(pred, gt, mask).clamp_min(1e-12))


@lru_cache(maxsize=8)
def _window(dtype: torch.dtype, device: str) -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def _blur_values(x: Tensor) -> Tensor:
    """Separable Gaussian filter of (B,C,H,W), zero padding, same size (no autograd graph).

    Written as 11 shifted multiply-adds per axis, accumulated in place. The blur is self-adjoint (a
    zero-padded correlation's transpose is the correlation with the flipped kernel, zero-padded the same
    way, and the window is symmetric), which _SSIMMap's backward relies on.
    """
    g = _window(x.dtype, str(x.device)).tolist()
    return _blur_axis(_blur_axis(x, g, -1), g, -2)


def _blur_axis(x: Tensor, g: list[float], dim: int) -> Tensor:
    """out[i] = sum_k g[k] x[i + k - r] along dim, zeros outside: the centre tap, then each other tap
    added over the range where it lands inside the image (no padded copy)."""
    r = len(g) // 2
    n = x.shape[dim]
    out = x * g[r]
    for k, gk in enumerate(g):
        o = k - r
        if o == 0 or abs(o) >= n:
            continue
        dst = out.narrow(dim, max(0, -o), n - abs(o))
        dst.add_(x.narrow(dim, max(0, o), n - abs(o)), alpha=gk)
    return out


class _SSIMMap(torch.autograd.Function):
    """SSIM map of (B,C,H,W) images with a hand-written backward.

    With the blurred moments mu_x, mu_y, e_xx, e_yy, e_xy (blurs of x, y, x², y², xy) and
    A1 = 2 mu_x mu_y + C1, A2 = 2 (e_xy - mu_x mu_y) + C2, B1 = mu_x² + mu_y² + C1,
    B2 = e_xx - mu_x² + e_yy - mu_y² + C2, S = A1 A2 / (B1 B2). For an incoming gradient G of S:
        dS/dmu_x = 2 / (B1 B2) * (mu_y (A2 - A1) + mu_x S (B1 - B2)),
        dS/de_xx = -S / B2,   dS/de_xy = 2 A1 / (B1 B2),
    and since the blur is self-adjoint, dL/dx = blur(G dS/dmu_x) + 2 x blur(G dS/de_xx) + y blur(G dS/de_xy)
    (symmetrically for y). One 3C-channel blur replaces autograd's 5C-channel blur backward and the
    backward of some 30 element-wise ops (autograd through the blur's shifted slices made SSIM half of a
    training step: bench/step_profile.py; bench/ssim.py compares with an autograd SSIM).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        c = x.shape[1]
        mu_x, mu_y, exx, eyy, exy = _blur_values(torch.cat([x, y, x * x, y * y, x * y], dim=1)).split(c, dim=1)
        mxy = mu_x * mu_y
        mxx = mu_x * mu_x
        myy = mu_y * mu_y
        a1 = 2 * mxy + SSIM_C1
        a2 = 2 * (exy - mxy) + SSIM_C2
        b1 = mxx + myy + SSIM_C1
        b2 = (exx - mxx) + (eyy - myy) + SSIM_C2
        out = (a1 * a2) / (b1 * b2)
        ctx.save_for_backward(x, y, mu_x, mu_y, a1, a2, b1, b2, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, mu_x, mu_y, a1, a2, b1, b2, s = ctx.saved_tensors
        c = x.shape[1]
        g_bb = grad / (b1 * b2)
        g_e2 = -grad * s / b2  # d/de_xx = d/de_yy
        g_exy = 2 * g_bb * a1
        s_db = s * (b1 - b2)
        parts, out = [], []
        if ctx.needs_input_grad[0]:
            parts += [2 * g_bb * (mu_y * (a2 - a1) + mu_x * s_db)]
        if ctx.needs_input_grad[1]:
            parts += [2 * g_bb * (mu_x * (a2 - a1) + mu_y * s_db)]
        if not parts:
            return None, None
        blurred = _blur_values(torch.cat(parts + [g_e2, g_exy], dim=1)).split(c, dim=1)
        b_e2, b_exy = blurred[-2], blurred[-1]
        k = 0
        for i, (mine, other) in enumerate(((x, y), (y, x))):
            if ctx.needs_input_grad[i]:
                out.append(blurred[k] + 2 * mine * b_e2 + other * b_exy)
                k += 1
            else:
                out.append(None)
        return out[0], out[1]


def ssim_map(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-pixel, per-channel SSIM, (B,H,W,C)."""
    x = _batched(pred).permute(0, 3, 1, 2).contiguous()
    y = _batched(gt).permute(0, 3, 1, 2).contiguous()
    return _SSIMMap.apply(x, y).permute(0, 2, 3, 1)


def ssim(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    return _masked_mean(ssim_map(pred, gt), mask)


class LPIPS:
    """LPIPS through torchmetrics when its backbone weights can be had; else `available` is False.

    Its AlexNet/VGG weights are a download (and need torchvision), which these machines cannot do, so
    the metric is reported as "not computed" rather than as a number.
    """

    def __init__(self, net: str = "alex"):
        self.reason = ""
        self.metric = None
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
        except Exception as exc:  # ImportError (torchvision) or a failed weight download
            self.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    @property
    def available(self) -> bool:
        return self.metric is not None

    @torch.no_grad()
    def __call__(self, pred: Tensor, gt: Tensor) -> float:
        m = self.metric.to(pred.device)
        return float(m(_batched(pred).permute(0, 3, 1, 2).clamp(0, 1), _batched(gt).permute(0, 3, 1, 2).clamp(0, 1)))


def format_metric(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"
