"""The fused native L1+SSIM loss (internal/loss.py, csrc/loss.cpp) against the torch loss (metrics.l1 and
metrics.ssim through autograd) computed in float64: value and gradient, with and without a mask, at every
compiled x86-64 level; the AVX2 and AVX-512 builds and any thread count give the same bits."""

from __future__ import annotations

import pytest
import torch

from internal import loss as loss_mod
from internal import metrics

if not loss_mod.native_available():  # pragma: no cover
    pytest.skip("the native cpu rasterizer (with its loss kernel) is not built: run scripts/setup.sh",
                allow_module_level=True)

import cpu_rasterizer  # noqa: E402

LEVELS = cpu_rasterizer.available_levels()


def images(h, w, seed, masked):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    # a render that resembles the target (SSIM away from 0), with a few exact ties for L1's kink
    pred = (gt + 0.1 * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    pred[::7, ::5] = gt[::7, ::5]
    mask = (torch.rand(h, w, generator=g) > 0.3) if masked else None
    return pred, gt, mask


def fused(pred, gt, mask, lam, module):
    saved = loss_mod._native
    loss_mod._native = module
    try:
        p = pred.clone().requires_grad_(True)
        value = loss_mod.photometric_loss(p, gt, mask, lam)
        value.backward()
    finally:
        loss_mod._native = saved
    return value.detach(), p.grad


def reference(pred, gt, mask, lam):
    p = pred.double().requires_grad_(True)
    value = loss_mod.photometric_loss(p, gt.double(), mask, lam, fused=False)
    value.backward()
    return value.detach(), p.grad


@pytest.mark.parametrize("h, w", [(37, 53), (6, 9), (16, 16)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("lam", [0.2, 0.0, 1.0])
def test_fused_loss_matches_the_torch_loss(h, w, masked, lam):
    pred, gt, mask = images(h, w, seed=h * w, masked=masked)
    want, gwant = reference(pred, gt, mask, lam)
    for level in LEVELS:
        got, ggot = fused(pred, gt, mask, lam, cpu_rasterizer.load(level))
        assert got.dtype == torch.float32 and got.dim() == 0
        assert abs(float(got) - float(want)) <= 1e-6 + 1e-5 * abs(float(want)), (level, float(got), float(want))
        scale = float(gwant.abs().max())
        err = (ggot.double() - gwant).abs()
        assert float(err.max()) <= 1e-4 * scale, f"[{level}] gradient error {float(err.max()):.3g}, max |grad| {scale:.3g}"
        if mask is not None and lam == 0.0:  # L1 alone: masked-out pixels get exactly no gradient
            assert not ggot[~mask].any()
        # (SSIM's windows at kept pixels reach masked-out ones, so with lam > 0 those get gradient too)


def test_the_loss_is_what_training_computed_before():
    # The fused call stands for the module's old three lines: (1-λ)·l1 + λ·(1-ssim), float32 autograd.
    pred, gt, mask = images(40, 30, seed=3, masked=True)
    p = pred.clone().requires_grad_(True)
    old = 0.8 * metrics.l1(p, gt, mask) + 0.2 * (1.0 - metrics.ssim(p, gt, mask))
    old.backward()
    new, gnew = fused(pred, gt, mask, 0.2, loss_mod._native)
    torch.testing.assert_close(new, old.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gnew, p.grad, rtol=1e-3, atol=1e-7)


def test_builds_and_threads_give_the_same_bits():
    pred, gt, mask = images(61, 45, seed=7, masked=True)
    saved = torch.get_num_threads()
    outs = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for level in LEVELS:
                outs[(level, threads)] = fused(pred, gt, mask, 0.2, cpu_rasterizer.load(level))
    finally:
        torch.set_num_threads(saved)
    fast = [lv for lv in LEVELS if lv in ("x86-64-v3", "x86-64-v4")]
    keys = [(lv, t) for lv in fast for t in (1, 2)] or [(LEVELS[-1], 1), (LEVELS[-1], 2)]
    v0, g0 = outs[keys[0]]
    for k in keys[1:]:
        v, g = outs[k]
        assert torch.equal(v, v0) and torch.equal(g, g0), k


def test_other_inputs_take_the_torch_path():
    pred, gt, _ = images(20, 20, seed=1, masked=False)
    assert loss_mod._fusable(pred, gt, None)
    assert not loss_mod._fusable(pred.double(), gt.double(), None)  # float64: torch
    assert not loss_mod._fusable(pred[None], gt[None], None)  # batched: torch
    assert not loss_mod._fusable(pred, gt.clone().requires_grad_(True), None)  # gradient to gt wanted: torch
    g = gt.clone().requires_grad_(True)
    value = loss_mod.photometric_loss(pred, g, None, 0.2)
    value.backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    with torch.no_grad():  # evaluation: value only, the same as with the gradient
        v = loss_mod.photometric_loss(pred, gt, None, 0.2)
    torch.testing.assert_close(v, fused(pred, gt, None, 0.2, loss_mod._native)[0], rtol=0, atol=0)
