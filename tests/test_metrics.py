"""PSNR and SSIM against independent computations."""

import math

import numpy as np
import pytest
import torch

from internal import metrics


def brute_ssim(x: np.ndarray, y: np.ndarray, i: int, j: int, c: int) -> float:
    """SSIM at pixel (i,j) of channel c: Gaussian-weighted moments over the 11x11 window, zeros outside."""
    r = 5
    g1 = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g1 /= g1.sum()
    w = np.outer(g1, g1)
    H, W = x.shape[:2]
    px = np.zeros((11, 11))
    py = np.zeros((11, 11))
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            if 0 <= i + a < H and 0 <= j + b < W:
                px[a + r, b + r] = x[i + a, j + b, c]
                py[a + r, b + r] = y[i + a, j + b, c]
    mx, my = (w * px).sum(), (w * py).sum()
    sxx = (w * px * px).sum() - mx * mx
    syy = (w * py * py).sum() - my * my
    sxy = (w * px * py).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def test_ssim_map_matches_a_brute_force_window_including_borders():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 23, 3, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(20, 23, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    m = metrics.ssim_map(x, y)[0]
    for i, j, c in [(0, 0, 0), (3, 17, 1), (10, 11, 2), (19, 22, 0), (5, 0, 2)]:
        assert m[i, j, c].item() == pytest.approx(brute_ssim(x.numpy(), y.numpy(), i, j, c), abs=1e-10)


def test_blur_is_self_adjoint():
    """_SSIMMap's backward applies the blur to gradients: that needs the blur's matrix to be symmetric
    (symmetric window, zero padding). Built column by column in float64, on an image smaller than the
    window in one axis and off-square."""
    for shape in [(13, 9), (4, 17)]:
        n = shape[0] * shape[1]
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
        m = metrics._blur_values(basis).reshape(n, n)  # row i: the blur of basis image i
        assert m.abs().sum() > 0
        torch.testing.assert_close(m, m.T, rtol=0, atol=1e-15)


def test_ssim_loss_gradient_by_finite_differences():
    g = torch.Generator().manual_seed(2)
    y = torch.rand(12, 14, 3, generator=g, dtype=torch.float64)
    x = (y + 0.2 * torch.randn(12, 14, 3, generator=g, dtype=torch.float64)).clamp(0, 1).requires_grad_(True)
    mask = torch.rand(12, 14, generator=g) > 0.3
    assert torch.autograd.gradcheck(lambda a: metrics.ssim(a, y), (x,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda a: metrics.ssim(a, y, mask), (x,), eps=1e-6, atol=1e-8)
    # Both images (the map is not symmetric in its use, but the formula is).
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: metrics.ssim(a, b, mask), (x, y), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda b: metrics.ssim_map(x.detach(), b).sum(), (y,), eps=1e-6, atol=1e-8)


def test_ssim_identity_and_masking():
    x = torch.rand(32, 32, 3)
    assert metrics.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    y = x.clone()
    y[:, 16:] = 1 - y[:, 16:]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :5] = True  # far from the damaged half: the window (radius 5) never reaches it
    assert metrics.ssim(x, y, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(x, y).item() < 0.7


def test_psnr_matches_the_definition_and_respects_masks():
    x = torch.zeros(10, 10, 3)
    y = torch.full((10, 10, 3), 0.1)
    assert metrics.psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    y[:5] = 0.5
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[5:] = True
    assert metrics.psnr(x, y, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert metrics.psnr(x, y).item() == pytest.approx(-10 * math.log10((0.25 + 0.01) / 2), abs=1e-4)


def test_lpips_is_not_a_number_when_it_cannot_be_computed():
    lp = metrics.LPIPS()
    if lp.available:
        pytest.skip("LPIPS weights are available on this machine")
    assert lp.reason  # says why, and the module reports "not computed"
