"""The photometric training loss of 3DGS: (1-λ)·L1 + λ·(1-SSIM), masked, as one call.

    loss = photometric_loss(pred, gt, mask, ssim_weight)       # pred, gt (H,W,3) in [0,1]; mask (H,W) bool or None

On the CPU with float32 images and the native extension built, it is one fused kernel
(submodules/cpu_rasterizer/csrc/loss.cpp): both blurs of SSIM, the SSIM map, L1 and the whole gradient
with respect to `pred` in two vectorised, multithreaded passes over the image, computed during the
forward (the loss is a scalar, so the backward only scales the stored gradient). Everywhere else
(CUDA, float64, batched images, no extension) it is metrics.l1 and metrics.ssim through autograd. The
two agree to float32 rounding (tests/test_loss.py); SSIM's window and constants come from metrics.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import metrics

try:
    from cpu_rasterizer import _C as _native  # type: ignore
except (ImportError, RuntimeError):  # not built, or CPU_RASTERIZER_ISA unusable (internal.rasterize reports it)
    _native = None

if _native is not None and not hasattr(_native, "l1_ssim_loss"):  # an extension built before the kernel existed
    _native = None


def native_available() -> bool:
    return _native is not None


class _FusedL1SSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred: Tensor, gt: Tensor, mask: Tensor | None, lam: float) -> Tensor:
        window = metrics._window(torch.float32, "cpu")
        loss, _, _, grad = _native.l1_ssim_loss(
            pred, gt, mask if mask is not None else torch.empty(0, dtype=torch.bool), window,
            metrics.SSIM_C1, metrics.SSIM_C2, float(lam), ctx.needs_input_grad[0],
        )
        ctx.save_for_backward(grad if ctx.needs_input_grad[0] else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * g if grad is not None else None), None, None, None


def _fusable(pred: Tensor, gt: Tensor, mask: Tensor | None) -> bool:
    if _native is None or pred.dim() != 3 or pred.shape != gt.shape:
        return False
    if pred.device.type != "cpu" or gt.device.type != "cpu" or pred.dtype != torch.float32 or gt.dtype != torch.float32:
        return False
    if gt.requires_grad and torch.is_grad_enabled():  # the kernel differentiates with respect to pred only
        return False
    return mask is None or (mask.dtype == torch.bool and mask.shape == pred.shape[:2] and mask.device.type == "cpu")


def photometric_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None, ssim_weight: float = 0.2, fused: bool = True) -> Tensor:
    """(1-λ)·L1 + λ·(1-SSIM) of `pred` against `gt`, means over the pixels where `mask` is True.

    pred, gt: (H,W,C) (or (B,H,W,C): the torch path); mask (H,W) bool or None; λ = ssim_weight.
    fused=False forces the torch path (tests and benchmarks compare the two).
    """
    if fused and _fusable(pred, gt, mask):
        return _FusedL1SSIM.apply(pred.contiguous(), gt.detach().contiguous(), None if mask is None else mask.contiguous(),
                                  float(ssim_weight))
    l1 = metrics.l1(pred, gt, mask)
    ssim = metrics.ssim(pred, gt, mask)
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim)


__all__ = ["photometric_loss", "native_available"]
