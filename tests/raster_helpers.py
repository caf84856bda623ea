"""What the rasterizer backend tests share: test scenes, running rasterize() with gradients, and comparisons
with the contract's tolerances (docs/rasterizer.md).

Contract: forward colour and alpha within 1e-4 of the torch reference, every input gradient within rtol 1e-3 /
atol 1e-4. Two backends compute in float32 in different orders, so two things can legitimately exceed those
bands, and the helpers below allow for exactly them and bound them:

* Discontinuities. alpha >= 1/255, T < 1e-4 and the integer radius (which decides the tiles a Gaussian is
  drawn in) are thresholds: a value within float rounding of one can fall on different sides in two correct
  implementations, and that pixel then differs by up to ~1/255 of a colour. `assert_images_close` allows at
  most a handful of such pixels (a fraction 2e-5 of the image, and never more than 20), and checks that
  all other pixels meet 1e-4.
* Cancellation in gradients. A gradient element is a sum over many pixels of terms that can be 1e4-1e7
  times larger than the sum (conic gradients of tiny Gaussians reach 1e7). Float32 rounding of the terms
  then leaves an absolute error proportional to the terms, not to the result. `assert_grads_close`
  requires rtol 1e-3 / atol 1e-4 for all but a fraction 1e-4 of the elements (at least 3 allowed), and those
  few within 1e-4 of the tensor's largest magnitude (the size of the cancelled terms).
All other elements must meet the contract's tolerances exactly.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

import numpy as np
import torch

from internal.rasterize import RenderOutput, rasterize
from internal.rasterize.projection import SH_C0, tile_bounds

from tests.conftest import shared_path

PIXEL_FLIP_FRACTION = 2e-5
GRAD_OUTLIER_FRACTION = 1e-4


# ------------------------------------------------------------------------------------------------
# Comparison helpers


def assert_images_close(name, got, want, tol=1e-4):
    diff = (got - want).abs()
    if diff.dim() > 3:
        diff = diff.amax(dim=-1)  # per pixel
    bad = int((diff > tol).sum())
    allowed = min(20, max(2, int(PIXEL_FLIP_FRACTION * diff.numel())))
    assert bad <= allowed, f"{name}: {bad} pixels differ by more than {tol} (max {diff.max():.3g}), allowed {allowed}"
    # A threshold flip moves a pixel by about one Gaussian's contribution at alpha ~ 1/255 or T ~ 1e-4.
    assert diff.max() < 0.05, f"{name}: max difference {diff.max():.3g}"


def assert_grads_close(name, got, want, rtol=1e-3, atol=1e-4):
    assert got is not None and want is not None, f"{name}: missing gradient"
    assert torch.isfinite(got).all(), f"{name}: non-finite gradient"
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    n_bad = int(bad.sum())
    allowed = max(3, int(GRAD_OUTLIER_FRACTION * want.numel()))
    scale = float(want.abs().max()) if want.numel() else 0.0
    assert n_bad <= allowed, (
        f"{name}: {n_bad}/{want.numel()} elements outside rtol {rtol}/atol {atol} (allowed {allowed}); "
        f"max err {float(err.max()):.3g}, max |grad| {scale:.3g}"
    )
    if n_bad:
        worst = float(err[bad].max())
        assert worst <= atol + 1e-4 * scale, f"{name}: outlier error {worst:.3g} beyond 1e-4 of max |grad| {scale:.3g}"


# ------------------------------------------------------------------------------------------------
# Scenes


def random_rotation(g):
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def random_scene(seed, n=300, cameras=2, width=61, height=47, sh_degree=3, colors="sh"):
    """Gaussians around the origin seen by cameras on a sphere of radius ~5, each with its own intrinsics."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 1.2
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.02), math.log(0.4), generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.98 + 0.01
    if colors == "sh":
        coeffs = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
        coeffs[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / SH_C0
    elif colors == "rgb":
        coeffs, sh_degree = torch.rand(n, 3, generator=g), None
    else:  # per-camera colours
        coeffs, sh_degree = torch.rand(cameras, n, 3, generator=g), None
    viewmats, Ks = [], []
    for c in range(cameras):
        rot = random_rotation(g).float() if c else torch.eye(3)
        vm = torch.eye(4)
        vm[:3, :3] = rot
        vm[:3, 3] = torch.tensor([0.1 * c, -0.2 * c, 5.0 + c])
        viewmats.append(vm)
        f = 40.0 + 15.0 * c
        Ks.append(torch.tensor([[f, 0.0, width / 2 + 3 * c], [0.0, f * 1.1, height / 2 - 2 * c], [0.0, 0.0, 1.0]]))
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=coeffs,
                viewmats=torch.stack(viewmats), Ks=torch.stack(Ks), width=width, height=height, sh_degree=sh_degree)


def garden_scene(every=1, downscale=1):
    """gsplat's garden points: scales from the 3 nearest neighbours, seeded rotations/opacities, SH degree 3."""
    from scipy.spatial import cKDTree

    d = np.load(shared_path("gsplat_test_garden", "test_garden.npz"))
    pts = d["means3d"].astype(np.float64)
    dist, _ = cKDTree(pts).query(pts, k=4)
    keep = slice(None, None, every)
    pts, rgb = pts[keep], d["colors"][keep].astype(np.float64) / 255.0
    scale = np.maximum(dist[keep, 1:].mean(axis=1), 1e-7)
    g = torch.Generator().manual_seed(0)
    n = pts.shape[0]
    coeffs = torch.randn(n, 16, 3, generator=g) * 0.1
    coeffs[:, 0] = (torch.from_numpy(rgb).float() - 0.5) / SH_C0
    Ks = torch.from_numpy(d["Ks"]).float().clone()
    Ks[:, :2, :] /= downscale
    return dict(means=torch.from_numpy(pts).float(), quats=torch.randn(n, 4, generator=g),
                scales=torch.from_numpy(scale).float()[:, None].repeat(1, 3),
                opacities=torch.rand(n, generator=g) * 0.9 + 0.05, colors=coeffs,
                viewmats=torch.from_numpy(d["viewmats"]).float(), Ks=Ks,
                width=int(d["width"]) // downscale, height=int(d["height"]) // downscale, sh_degree=3)


PARAMS = ("means", "quats", "scales", "opacities", "colors")


def _to_cpu(out: RenderOutput) -> RenderOutput:
    return dataclasses.replace(out, **{f.name: getattr(out, f.name).detach().cpu()
                                       for f in dataclasses.fields(out) if torch.is_tensor(getattr(out, f.name))})


def run(scene, backend, cameras=None, backgrounds=None, grad=True, seed=11, device="cpu"):
    """rasterize() with leaf copies of the Gaussian parameters on `device`; returns (output, grads by name), on the CPU.

    The loss weights are drawn on the CPU from `seed`, so every backend and device gets the same loss.
    """
    sl = slice(None) if cameras is None else cameras
    leaves = {k: scene[k].detach().to(device).clone().requires_grad_(grad) for k in PARAMS}
    bg = None if backgrounds is None else backgrounds.to(device)
    out = rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                    scene["viewmats"][sl].to(device), scene["Ks"][sl].to(device), scene["width"], scene["height"],
                    sh_degree=scene["sh_degree"], backgrounds=bg, backend=backend)
    if not grad:
        return _to_cpu(out), {}
    out.means2d.retain_grad()
    g = torch.Generator().manual_seed(seed)

    def weights(t):
        return torch.rand(t.shape, generator=g).to(device)

    loss = ((out.colors * weights(out.colors)).sum() + (out.alphas * weights(out.alphas)).sum()
            + (out.depths * weights(out.depths)).sum() * 0.1)
    if not loss.requires_grad:  # nothing drawn and nothing differentiable (e.g. no Gaussians at all)
        return _to_cpu(out), {}
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2d"] = out.means2d.grad
    return _to_cpu(out), {k: (None if v is None else v.cpu()) for k, v in grads.items()}


def assert_radii_close(ref, got, where=None):
    """Radii equal but for a few flips of the integer rounding (at most one in 10000), optionally only `where`."""
    differ = ref.radii != got.radii
    if where is not None:
        differ = differ & where
    allowed = max(1, ref.radii.numel() // 10000)
    assert int(differ.sum()) <= allowed, f"{int(differ.sum())} radii differ (allowed {allowed})"


def assert_outputs_close(ref, got, radii=True):
    """Forward outputs of two backends with the contract's tolerances (radii, colours, alphas, expected depth)."""
    if radii:
        assert_radii_close(ref, got)
    assert_images_close("colors", got.colors, ref.colors)
    assert_images_close("alphas", got.alphas, ref.alphas)
    # Expected depth divides by alpha: compare the depth channel where alpha is not tiny.
    solid = ref.alphas > 0.05
    assert_images_close("depths", (got.depths * solid), (ref.depths * solid), tol=1e-3)


def assert_all_grads_close(gref, ggot, names=None):
    for k in sorted(set(gref) | set(ggot)) if names is None else names:
        g_ref, g_got = gref.get(k), ggot.get(k)
        if g_ref is None or g_got is None:  # one side has no graph at all: the other must be all zero
            other = g_ref if g_got is None else g_got
            assert other is None or not other.abs().any(), k
            continue
        assert_grads_close(k, g_got, g_ref)


def compare(scene, cameras=None, backgrounds=None, grad=True, backend="cpu", device="cpu"):
    """`backend` on `device` against the torch reference on the CPU: outputs and every gradient."""
    ref, gref = run(scene, "torch", cameras, backgrounds, grad)
    got, ggot = run(scene, backend, cameras, backgrounds, grad, device=device)
    assert_outputs_close(ref, got)
    assert_all_grads_close(gref, ggot)
    return ref, got


# ------------------------------------------------------------------------------------------------
# gsplat 1.5.3's two rules that differ from the contract, emulated in the torch reference


GSPLAT_EXTEND = 3.33  # gsplat bounds a Gaussian by its ellipse at Mahalanobis distance <= 3.33 (alpha >= 1/255)
GSPLAT_ALPHA_MAX = 0.999  # gsplat's alpha clamp (the contract's, after the original 3DGS, is 0.99)


@contextmanager
def gsplat_rules(tile_size: int = 16):
    """Inside this block the torch reference follows gsplat 1.5.3 where it departs from the contract:

    * tiles: every Gaussian is drawn in a tile rectangle that covers gsplat's box (the bounding box of its
      ellipse at Mahalanobis distance 3.33, which holds every pixel where its alpha can reach 1/255) instead
      of the contract's tiles of the 3-sigma circle. Pixels outside gsplat's box have alpha < 1/255 and are
      skipped by the threshold either way, so a larger rectangle than gsplat's changes nothing;
    * alpha clamp: 0.999 instead of 0.99.
    The reference then computes the function gsplat computes. The radii of its RenderOutput are the enlarged
    ones: compare radii with a run outside this block.
    """
    import internal.rasterize as R
    from internal.rasterize import reference

    original, alpha_max = R.project_gaussians, reference.ALPHA_MAX

    def project(means, quats, scales, viewmats, Ks, width, height, near, far, tile):
        means2d, conics, depths, radii = original(means, quats, scales, viewmats, Ks, width, height, near, far, tile)
        with torch.no_grad():
            a, b, c = conics.detach().unbind(-1)
            inv_det = (a * c - b * b).clamp_min(1e-30)
            var_max = torch.maximum(c / inv_det, a / inv_det)  # the larger diagonal entry of the 2D covariance
            big = torch.ceil(GSPLAT_EXTEND * torch.sqrt(var_max)) + tile_size  # + a tile: gsplat ceils the far edge
            in_range = (depths > near) & (depths < far)
            big = torch.where(in_range & torch.isfinite(big), big, torch.zeros_like(big))
            big = big.clamp(max=float(4 * max(width, height) + 4 * tile_size)).to(torch.int32)
            x0, x1, y0, y1 = tile_bounds(means2d, big, width, height, tile_size)
            big = torch.where((x1 - x0) * (y1 - y0) > 0, big, torch.zeros_like(big))
        return means2d, conics, depths, torch.maximum(big, radii)

    R.project_gaussians, reference.ALPHA_MAX = project, GSPLAT_ALPHA_MAX
    try:
        yield
    finally:
        R.project_gaussians, reference.ALPHA_MAX = original, alpha_max
