"""The torch reference rasterizer: analytic checks, finite differences, edge cases.

It is the oracle for the other backends, so these tests check it against values computed here
independently (closed-form Gaussians) and against finite differences in float64.
"""

import math

import pytest
import torch

from internal.rasterize import rasterize
from internal.rasterize.projection import SH_C0, eval_sh


def look_at_origin(distance=4.0):
    """World-to-camera matrix of a camera on -z looking at the origin (OpenCV axes)."""
    vm = torch.eye(4, dtype=torch.float64)
    vm[2, 3] = distance
    return vm


def intrinsics(f, w, h, cx=None, cy=None):
    return torch.tensor([[f, 0, w / 2 if cx is None else cx], [0, f, h / 2 if cy is None else cy], [0, 0, 1]], dtype=torch.float64)


def gaussians(means, scales, opac, colors, dtype=torch.float64):
    means = torch.as_tensor(means, dtype=dtype)
    n = means.shape[0]
    quats = torch.zeros(n, 4, dtype=dtype)
    quats[:, 0] = 1.0
    return means, quats, torch.as_tensor(scales, dtype=dtype), torch.as_tensor(opac, dtype=dtype), torch.as_tensor(colors, dtype=dtype)


def test_single_isotropic_gaussian_matches_closed_form():
    # An isotropic Gaussian on the optical axis: J = diag(f/z), so cov2d = (f s / z)^2 + 0.3 exactly.
    w, h, f, z, s, op = 64, 48, 50.0, 4.0, 0.2, 0.8
    means, quats, scales, opac, cols = gaussians([[0, 0, 0]], [[s, s, s]], [op], [[0.2, 0.6, 1.0]])
    out = rasterize(means, quats, scales, opac, cols, look_at_origin(z)[None], intrinsics(f, w, h)[None], w, h, backend="torch")
    var = (f * s / z) ** 2 + 0.3
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    alpha = op * torch.exp(-0.5 * ((xs - w / 2) ** 2 + (ys - h / 2) ** 2) / var)
    alpha = torch.where(alpha >= 1 / 255, alpha.clamp(max=0.99), torch.zeros_like(alpha))
    # Only pixels inside the tiles the 3-sigma radius touches are drawn; this image is 4x3 tiles and the
    # Gaussian (radius ceil(3*sqrt(var)) = 9 px) at the centre touches the middle 2x2 tiles.
    inside = (xs >= 16) & (xs < 48) & (ys >= 16) & (ys < 32)
    alpha = torch.where(inside, alpha, torch.zeros_like(alpha))
    assert out.radii[0, 0].item() == math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))  # mid^2 - det = 0 -> clamp 0.1
    torch.testing.assert_close(out.alphas[0, ..., 0], alpha, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.colors[0], alpha[..., None] * cols[0], atol=1e-12, rtol=1e-10)
    drawn = out.alphas[0, ..., 0] > 0
    torch.testing.assert_close(out.depths[0, ..., 0][drawn], torch.full_like(out.depths[0, ..., 0][drawn], z))
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([w / 2, h / 2], dtype=torch.float64))


def test_front_gaussian_occludes_back_one_and_order_is_by_depth():
    w = h = 32
    # Listed back first: compositing must sort by depth, not by index.
    means, quats, scales, opac, cols = gaussians([[0, 0, 1.0], [0, 0, 0]], [[3.0] * 3] * 2, [1.0, 1.0], [[1, 0, 0], [0, 1, 0]])
    out = rasterize(means, quats, scales, opac, cols, look_at_origin(4.0)[None], intrinsics(20.0, w, h)[None], w, h, backend="torch")
    c = out.colors[0, h // 2, w // 2]
    # Opacity 1 at (almost) the centre is clamped to alpha 0.99. Front (green) gets 0.99, the back (red) 0.99 * 0.01, then T = 1e-4 would be hit exactly -> stop rule.
    assert c[1] == pytest.approx(0.99, abs=1e-9)
    assert c[0] == pytest.approx(0.99 * 0.01, abs=1e-9)
    assert out.depths[0, h // 2, w // 2, 0].item() == pytest.approx((0.99 * 4.0 + 0.0099 * 5.0) / (0.99 + 0.0099))


def test_transmittance_stop_drops_the_gaussian_that_would_cross_1e_4():
    w = h = 16
    n = 3  # (1-0.99)^2 = 1e-4 is not < 1e-4, so two are drawn; the third would make 1e-6 and is left out.
    means, quats, scales, opac, cols = gaussians([[0, 0, 0.1 * i] for i in range(n)], [[5.0] * 3] * n, [1.0] * n, torch.eye(3))
    out = rasterize(means, quats, scales, opac, cols, look_at_origin(4.0)[None], intrinsics(10.0, w, h)[None], w, h, backend="torch")
    c = out.colors[0, 8, 8]
    assert c[0].item() == pytest.approx(0.99)
    assert c[1].item() == pytest.approx(0.0099)
    assert c[2].item() == 0.0
    assert out.alphas[0, 8, 8, 0].item() == pytest.approx(1 - 0.01 * 0.01)


@pytest.mark.parametrize("case", ["empty", "behind", "beyond_far", "outside_frustum"])
def test_nothing_drawn_gives_background(case):
    w, h = 40, 24
    pos = {"empty": None, "behind": [0, 0, -10.0], "beyond_far": [0, 0, 100.0], "outside_frustum": [50.0, 0, 0]}[case]
    means, quats, scales, opac, cols = gaussians([pos] if pos else torch.zeros(0, 3), [[0.1] * 3] if pos else torch.zeros(0, 3),
                                                [0.9] if pos else torch.zeros(0), [[1, 1, 1]] if pos else torch.zeros(0, 3))
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, cols, look_at_origin(4.0)[None], intrinsics(30.0, w, h)[None], w, h,
                    far=50.0, backgrounds=bg, backend="torch")
    assert out.colors.shape == (1, h, w, 3)
    torch.testing.assert_close(out.colors[0], bg.expand(h, w, 3))
    assert (out.alphas == 0).all() and (out.depths == 0).all() and (out.radii == 0).all()


def test_camera_inside_a_huge_gaussian_and_tiny_gaussians_stay_finite():
    w, h = 48, 33  # neither a multiple of 16
    means, quats, scales, opac, cols = gaussians([[0, 0, 0], [0.1, 0, 1], [0, 0.1, 1]], [[50.0] * 3, [1e-6] * 3, [1e-4, 1e-3, 1e-2]],
                                                [0.5, 0.9, 0.9], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = rasterize(means, quats, scales, opac, cols, look_at_origin(1.0)[None], intrinsics(30.0, w, h)[None], w, h, backend="torch")
    assert torch.isfinite(out.colors).all() and torch.isfinite(out.depths).all()
    # The huge Gaussian (camera 1 unit from its centre, inside it) covers every pixel with almost its full opacity.
    assert (out.alphas > 0.45).all()
    # Tiny ones: 0.3 px dilation keeps a footprint of about one pixel.
    assert (out.radii[0, 1:] > 0).all() and (out.radii[0, 1:] <= 3).all()


def test_batched_cameras_with_different_intrinsics_equal_single_renders():
    g = torch.Generator().manual_seed(3)
    n, w, h = 40, 37, 29
    means = torch.randn(n, 3, generator=g, dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 0.1 + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opac = torch.rand(n, generator=g, dtype=torch.float64)
    sh = torch.randn(n, 9, 3, generator=g, dtype=torch.float64) * 0.5
    vms = torch.stack([look_at_origin(5.0), look_at_origin(6.0)])
    vms[1, :3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float64)  # looking along +x
    Ks = torch.stack([intrinsics(30.0, w, h), intrinsics(45.0, w, h, cx=15.0, cy=16.0)])
    both = rasterize(means, quats, scales, opac, sh, vms, Ks, w, h, sh_degree=2, backend="torch",
                     backgrounds=torch.tensor([[0, 0, 0], [1, 1, 1]], dtype=torch.float64))
    for c in range(2):
        one = rasterize(means, quats, scales, opac, sh, vms[c : c + 1], Ks[c : c + 1], w, h, sh_degree=2, backend="torch",
                        backgrounds=torch.tensor([float(c)] * 3, dtype=torch.float64))
        torch.testing.assert_close(both.colors[c], one.colors[0])
        torch.testing.assert_close(both.alphas[c], one.alphas[0])
    assert not torch.allclose(both.alphas[0], both.alphas[1])


def test_sh_degree_zero_is_the_dc_term_and_higher_degrees_are_view_dependent():
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(5, 16, 3, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(0, coeffs, dirs), SH_C0 * coeffs[:, 0])
    # The basis is orthonormal on the sphere: a Monte-Carlo inner product of two basis functions ~ delta.
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200000, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = []
    for k in range(16):
        c = torch.zeros(1, 16, 3, dtype=torch.float64)
        c[0, k, 0] = 1.0
        basis.append(eval_sh(3, c, d)[:, 0])
    gram = torch.stack(basis) @ torch.stack(basis).T * (4 * math.pi / d.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def _tiny_scene(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    n = 4
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.6
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    # Large enough to touch every tile of the 32x24 image, so a small change of the radius never adds
    # or removes a tile (that would be a discontinuity, not a gradient).
    scales = 0.5 + 0.3 * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.2 + 0.5 * torch.rand(n, generator=g, dtype=dtype)
    sh = torch.randn(n, 9, 3, generator=g, dtype=dtype) * 0.3
    return means, quats, scales, opac, sh


def test_reference_gradients_match_finite_differences_float64():
    means, quats, scales, opac, sh = _tiny_scene()
    vm = look_at_origin(3.0)
    vm[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.1, 0.2], [0.1, 0, -0.15], [-0.2, 0.15, 0]], dtype=torch.float64))
    Ks = intrinsics(20.0, 32, 24, cx=15.3, cy=12.7)[None]
    weights = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dweights = torch.rand(1, 24, 32, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def loss(means, quats, scales, opac, sh):
        out = rasterize(means, quats, scales, opac, sh, vm[None], Ks, 32, 24, sh_degree=2, backend="torch",
                        backgrounds=torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64))
        return (out.colors * weights).sum() + (out.alphas * dweights).sum() + 0.1 * (out.depths * dweights).sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, opac, sh))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_means2d_gradient_is_readable_for_densification():
    means, quats, scales, opac, sh = (t.float().requires_grad_(True) for t in _tiny_scene())
    out = rasterize(means, quats, scales, opac, sh, look_at_origin(3.0)[None].float(), intrinsics(20.0, 32, 24)[None].float(),
                    32, 24, sh_degree=2, backend="torch")
    out.means2d.retain_grad()
    out.colors.sum().backward()
    assert out.means2d.grad.shape == (1, 4, 2)
    assert (out.means2d.grad.abs().sum(-1) > 0).all()


def test_bad_inputs_are_refused_with_the_argument_named():
    means, quats, scales, opac, sh = _tiny_scene()
    vm, K = look_at_origin()[None], intrinsics(20.0, 32, 24)[None]
    with pytest.raises(ValueError, match="quats"):
        rasterize(means, quats[:, :3], scales, opac, sh, vm, K, 32, 24, sh_degree=2, backend="torch")
    with pytest.raises(ValueError, match="Ks"):
        rasterize(means, quats, scales, opac, sh, vm, K[0], 32, 24, sh_degree=2, backend="torch")
    with pytest.raises(ValueError, match="unknown rasterizer backend"):
        rasterize(means, quats, scales, opac, sh, vm, K, 32, 24, sh_degree=2, backend="vulkan")
    with pytest.raises(ValueError, match="dtype"):
        rasterize(means, quats.float(), scales, opac, sh, vm, K, 32, 24, sh_degree=2, backend="torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gsplat_backend_says_it_needs_a_gpu():
    means, quats, scales, opac, sh = _tiny_scene()
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        rasterize(means, quats, scales, opac, sh, look_at_origin()[None], intrinsics(20.0, 32, 24)[None], 32, 24,
                  sh_degree=2, backend="gsplat")
