"""The `cpu` backend (C++/OpenMP extension, submodules/cpu_rasterizer) against the torch reference.

Contract (docs/rasterizer.md): forward colour and alpha within 1e-4 of the reference, every input gradient
within rtol 1e-3 / atol 1e-4. Both backends compute in float32 in different orders, so two things can
legitimately exceed those bands; the comparison identifies them explicitly and bounds them:

* Discontinuities. The integer radius and the tile rectangle, and per pixel power > 0, alpha >= 1/255, the
  0.99 clamp and T < 1e-4, are thresholds (and the SH and frustum clamps kinks of the gradient): a value
  within float rounding of one can fall on different sides in two correct implementations, and which side
  depends on the CPU's BLAS/vector code paths (issue 9). `tests/threshold_margins.py` finds those cases
  from the float64 values and a bound on the float32 error, independently of the CPU: `compare` drops the
  Gaussians with such a projection decision from the scene (at most 0.5% of them) and gives the pixels with
  such a compositing decision zero weight in the loss and no say in the image comparison (at most 5%).
  Every other pixel must then meet 1e-4 with no exception, and the radii must be identical.
* Cancellation in gradients. A gradient element is a sum over many pixels of terms that can be 1e4-1e7
  times larger than the sum (conic gradients of tiny Gaussians reach 1e7). Float32 rounding of the terms
  then leaves an absolute error proportional to the terms, not to the result. `assert_grads_close`
  requires rtol 1e-3 / atol 1e-4 for all but a fraction 1e-4 of the elements (at least 3 allowed), and those
  few within 1e-4 of the tensor's largest magnitude (the size of the cancelled terms).
All other elements must meet the contract's tolerances exactly. The helpers live in tests/raster_helpers.py,
shared with the gsplat backend's tests (tests/test_gsplat.py).

The whole file runs in well under a minute on 2 cores; the torch reference dominates it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from internal.rasterize import native, rasterize, reference
from internal.rasterize.projection import project_gaussians, view_colors

from tests.conftest import REPO
from tests.raster_helpers import (
    AMBIGUOUS_PIXEL_FRACTION,
    PARAMS,
    assert_all_grads_close,
    assert_grads_close,
    assert_images_close,
    assert_outputs_close,
    drop_ambiguous_gaussians,
    garden_scene,
    random_scene,
    run,
    without_ambiguous,
)
from tests.threshold_margins import ambiguous_composite_pixels

if not native.available():  # pragma: no cover
    pytest.skip(
        "the native cpu rasterizer is not built (run scripts/setup.sh or "
        "`.venv/bin/pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer`)",
        allow_module_level=True,
    )

import cpu_rasterizer  # noqa: E402  (built: checked above)

# Every compiled x86-64 level of the kernels this CPU can run (issue 9): each is held to the reference.
LEVELS = cpu_rasterizer.available_levels()


@contextmanager
def kernels(level):
    """Route the cpu backend through the module compiled for `level` (e.g. "x86-64-v3")."""
    saved = native._C
    native._C = cpu_rasterizer.load(level)
    try:
        yield
    finally:
        native._C = saved


def compare(scene, cameras=None, backgrounds=None, grad=True):
    """rasterize() with the cpu backend, at every compiled level, against the torch reference."""
    scene, ambiguous = without_ambiguous(scene, cameras)
    ref, gref = run(scene, "torch", cameras, backgrounds, grad, ignore=ambiguous)
    for level in LEVELS:
        with kernels(level):
            got, ggot = run(scene, "cpu", cameras, backgrounds, grad, ignore=ambiguous)
        assert torch.equal(ref.radii, got.radii), f"[{level}] {int((ref.radii != got.radii).sum())} radii differ"
        assert_outputs_close(f"[{level}]", ref, got, ambiguous)
        assert_all_grads_close(f"[{level}]", gref, ggot)
    return ref, got


# ------------------------------------------------------------------------------------------------
# Stage by stage


def composite_with_grads(fn, inputs, depths, radii, width, height, keep):
    """fn (reference.composite or native.composite) on fresh leaves of inputs = (means2d, conics, features,
    opacities), then the backward of fixed random weights times render and alpha, masked by keep (C,H,W,1):
    (render, alpha, [the four input gradients])."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    render, alpha = fn(*leaves, depths, radii, width, height)
    gr = torch.Generator().manual_seed(5)
    ((render * torch.randn(render.shape, generator=gr) * keep).sum()
     + (alpha * torch.randn(alpha.shape, generator=gr) * keep).sum()).backward()
    return render, alpha, [x.grad for x in leaves]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_camera_opacity", [False, True])
def test_composite_matches_reference(seed, per_camera_opacity):
    s = random_scene(seed, n=400)
    with torch.no_grad():
        means2d, conics, depths, radii = project_gaussians(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"],
                                                           s["width"], s["height"])
    C, N = radii.shape
    g = torch.Generator().manual_seed(seed)
    features = torch.cat([torch.rand(C, N, 3, generator=g), depths[..., None]], -1)
    opac = s["opacities"][None].repeat(C, 1) if per_camera_opacity else s["opacities"]
    # The screen-space inputs are given (both backends get the same float32 values): only compositing
    # decisions can fall differently, and those pixels weigh nothing.
    ambiguous = ambiguous_composite_pixels(means2d, conics, opac, depths, radii, s["width"], s["height"])
    assert ambiguous.float().mean() <= AMBIGUOUS_PIXEL_FRACTION
    keep = (~ambiguous)[..., None].float()

    def composite(fn):
        return composite_with_grads(fn, (means2d, conics, features, opac), depths, radii, s["width"], s["height"], keep)

    r0, a0, g0 = composite(reference.composite)
    for level in LEVELS:
        with kernels(level):
            r1, a1, g1 = composite(native.composite)
        assert_images_close(f"[{level}] render", r1, r0, ambiguous)
        assert_images_close(f"[{level}] alpha", a1, a0, ambiguous)
        for name, x, y in zip(("means2d", "conics", "features", "opacities"), g1, g0):
            assert_grads_close(f"[{level}] {name}", x, y)
        assert g1[3].shape == opac.shape


def test_binning_by_footprint_keeps_every_contribution():
    """The kernels bin a Gaussian only into the tiles of its radius square that its alpha >= 1/255 ellipse
    reaches (opacity-aware, with slack for float error): thin, tilted and faint Gaussians lose most of their
    square. The result must still be the reference's (no pixel of a dropped tile had a contribution), and
    the number of (tile, Gaussian) pairs must be well below the squares' tiles (else the lever is gone)."""
    from internal.rasterize.projection import tile_bounds

    g = torch.Generator().manual_seed(7)
    W, H, N = 96, 80, 300
    means2d = torch.rand(1, N, 2, generator=g) * torch.tensor([W + 20.0, H + 20.0]) - 10.0
    theta = torch.rand(N, generator=g) * math.pi
    sig_major = 1.0 + torch.rand(N, generator=g) * 14.0
    sig_minor = sig_major / (1.0 + torch.rand(N, generator=g) * 19.0)  # up to 1:20
    c, s_ = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -s_], -1), torch.stack([s_, c], -1)], -2)
    cov = rot @ torch.diag_embed(torch.stack([sig_major, sig_minor], -1) ** 2) @ rot.transpose(-1, -2)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)[None].float().contiguous()
    opac = torch.cat([torch.rand(N - 20, generator=g) ** 3, torch.full((20,), 1.0 / 255.0 - 1e-4)])  # many faint
    radii = torch.ceil(3.0 * sig_major)[None].int()
    depths = torch.rand(1, N, generator=g) * 10.0
    features = torch.rand(1, N, 3, generator=g)
    ambiguous = ambiguous_composite_pixels(means2d, conics, opac, depths, radii, W, H)
    assert ambiguous.float().mean() <= AMBIGUOUS_PIXEL_FRACTION
    keep = (~ambiguous)[..., None].float()

    def composite(fn):
        return composite_with_grads(fn, (means2d, conics, features, opac), depths, radii, W, H, keep)

    r0, a0, g0 = composite(reference.composite)
    assert float(a0.detach().max()) > 0.5  # the scene is not empty
    x0, x1, y0, y1 = tile_bounds(means2d, radii, W, H)
    square_pairs = int(((x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)).sum())
    for level in LEVELS:
        with kernels(level):
            r1, a1, g1 = composite(native.composite)
            out = native._C.composite_forward(means2d, conics, features, opac, depths, radii, W, H, 16)
        assert_images_close(f"[{level}] render", r1, r0, ambiguous)
        assert_images_close(f"[{level}] alpha", a1, a0, ambiguous)
        for name, x, y in zip(("means2d", "conics", "features", "opacities"), g1, g0):
            assert_grads_close(f"[{level}] {name}", x, y)
        pairs = out[5].numel()  # [render, alpha, last, t_final, tile_offsets, isect, ...]
        assert pairs < 0.6 * square_pairs, (level, pairs, square_pairs)
        assert torch.equal(g1[3][-20:], torch.zeros(20))  # never above 1/255: not binned, no gradient


@pytest.mark.parametrize("channels", [1, 3, 7, 32])
def test_composite_any_channel_count(channels):
    s = random_scene(3, n=200, cameras=1, width=40, height=33)
    with torch.no_grad():
        means2d, conics, depths, radii = project_gaussians(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"],
                                                           s["width"], s["height"])
    features = torch.rand(1, 200, channels, generator=torch.Generator().manual_seed(channels))
    ambiguous = ambiguous_composite_pixels(means2d, conics, s["opacities"], depths, radii, s["width"], s["height"])
    keep = (~ambiguous)[..., None].float()

    def composite(fn):
        f = features.clone().requires_grad_(True)
        render, alpha = fn(means2d, conics, f, s["opacities"], depths, radii, s["width"], s["height"])
        ((render.square() * keep).sum() + (alpha * keep).sum()).backward()
        return render, f.grad

    want = composite(reference.composite)
    for level in LEVELS:
        with kernels(level):
            got = composite(native.composite)
        assert_images_close(f"[{level}] render", got[0], want[0], ambiguous)
        assert_grads_close(f"[{level}] features", got[1], want[1])


def test_native_projection_matches_torch():
    s = drop_ambiguous_gaussians(random_scene(4, n=500, cameras=3))
    args = (s["viewmats"], s["Ks"], s["width"], s["height"])

    def project(fn):
        leaves = [s[k].clone().requires_grad_(True) for k in ("means", "quats", "scales")]
        m2, con, dep, rad = fn(*leaves, *args)
        vis = (rad > 0)[..., None]
        g = torch.Generator().manual_seed(2)
        ((m2 * torch.randn(m2.shape, generator=g) * vis).sum() + (con * torch.randn(con.shape, generator=g) * vis).sum()
         + (dep * torch.randn(dep.shape, generator=g) * vis[..., 0]).sum()).backward()
        return (m2, con, dep, rad), [x.grad for x in leaves]

    o0, g0 = project(project_gaussians)
    vis = o0[3] > 0
    assert vis.sum() > 100
    for level in LEVELS:
        with kernels(level):
            o1, g1 = project(native.project_gaussians)
        assert torch.equal(o0[3], o1[3]), f"[{level}] radii differ"
        for name, x, y in zip(("means2d", "conics", "depths"), o1[:3], o0[:3]):
            torch.testing.assert_close(x[vis], y[vis], rtol=1e-5, atol=1e-5, msg=lambda m: f"[{level}] {name}: {m}")
        for name, x, y in zip(("means", "quats", "scales"), g1, g0):
            assert_grads_close(f"[{level}] {name}", x, y)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_native_sh_colors_match_torch(degree):
    s = drop_ambiguous_gaussians(dict(random_scene(5, n=300, cameras=2, sh_degree=3), sh_degree=degree))

    def shade(fn):
        means = s["means"].clone().requires_grad_(True)
        coeffs = s["colors"].clone().requires_grad_(True)
        col = fn(means, coeffs, degree, s["viewmats"])
        (col * torch.randn(col.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        return col, means.grad, coeffs.grad

    c0, m0, k0 = shade(view_colors)
    for level in LEVELS:
        with kernels(level):
            c1, m1, k1 = shade(native.view_colors)
        torch.testing.assert_close(c1, c0, rtol=0, atol=1e-6, msg=lambda m: f"[{level}] colours: {m}")
        assert_grads_close(f"[{level}] coeffs", k1, k0)
        if degree == 0:
            assert m1 is None or not m1.abs().any()
        else:
            assert_grads_close(f"[{level}] means", m1, m0)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sh_pair_is_bitwise_the_joined_coefficients(degree):
    """rasterize() given the model's (sh0, shN) pair (read in place by the kernel, no concatenation) gives
    the same bits as given torch.cat([sh0, shN], 1), and the same gradients, split."""
    s = random_scene(7, n=400, cameras=2, sh_degree=3)
    sh0, shN = s["colors"][:, :1].contiguous(), s["colors"][:, 1:].contiguous()

    def run(pair: bool):
        means = s["means"].clone().requires_grad_(True)
        a, b = sh0.clone().requires_grad_(True), shN.clone().requires_grad_(True)
        colors = (a, b) if pair else torch.cat([a, b], dim=1)
        out = rasterize(means, s["quats"], s["scales"], s["opacities"], colors, s["viewmats"], s["Ks"],
                        s["width"], s["height"], sh_degree=degree, backend="cpu")
        w = torch.randn(out.colors.shape, generator=torch.Generator().manual_seed(2))
        (out.colors * w).sum().backward()
        return out.colors.detach(), means.grad, a.grad, b.grad

    joined, pair = run(False), run(True)
    # shN gets a gradient at every degree, zero in the bands above it (at degree 0: all of it), as one
    # (N,K,3) tensor's slice did: Adam then steps it the same way (step count, moment decay).
    assert pair[3] is not None and pair[3][:, (degree + 1) ** 2 - 1:].abs().sum() == 0
    for name, x, y in zip(("colours", "means", "sh0", "shN"), pair, joined):
        assert torch.equal(x, y), f"{name} differ between the pair and the joined coefficients"


# ------------------------------------------------------------------------------------------------
# The whole rasterize() call


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_rasterize_matches_reference_sh_degrees(degree):
    compare(random_scene(10 + degree, sh_degree=degree), backgrounds=torch.tensor([0.2, 0.5, 0.9]))


@pytest.mark.parametrize("colors", ["rgb", "per_camera"])
def test_rasterize_matches_reference_plain_colors(colors):
    s = random_scene(20, colors=colors, cameras=3)
    compare(s, backgrounds=torch.rand(3, 3, generator=torch.Generator().manual_seed(0)))


def test_non_square_sizes_not_multiple_of_16():
    for w, h in ((17, 95), (100, 3), (1, 1), (33, 16)):
        compare(random_scene(30, n=150, cameras=1, width=w, height=h))


def edge_scene():
    return random_scene(40, n=1, cameras=2)


def test_no_gaussians_gives_the_background():
    base = edge_scene()
    empty = dict(base, **{k: base[k][:0] for k in PARAMS})
    ref, got = compare(empty, backgrounds=torch.tensor([0.3, 0.1, 0.7]))
    assert torch.equal(got.colors, torch.tensor([0.3, 0.1, 0.7]).expand_as(got.colors))


def test_all_culled():
    ref, got = compare(dict(edge_scene(), means=torch.tensor([[0.0, 0.0, -20.0]])))  # behind both cameras
    assert (got.radii == 0).all() and (got.alphas == 0).all()


def test_one_gaussian_covering_the_image():
    base = edge_scene()
    ref, got = compare(dict(base, means=torch.zeros(1, 3), scales=torch.full((1, 3), 30.0), opacities=torch.tensor([0.7])))
    assert (got.alphas > 0.5).all()


def test_camera_inside_a_gaussian():
    # camera 0 sits at (0, 0, -5) in world space; the Gaussian's 2-unit scale contains it
    compare(dict(edge_scene(), means=torch.tensor([[0.0, 0.0, -4.9]]), scales=torch.full((1, 3), 2.0)))


def test_huge_and_tiny_scales_as_accurate_as_the_reference():
    """Scales from 1e-5 to 50 in one scene, many Gaussians needle-thin (2D condition number up to 1e5).

    Such conics amplify a one-ulp difference in the projected covariance a hundred-thousand-fold, and both
    float32 backends then differ from the exact (float64) image by ~2e-3 and from each other by ~2e-4; so
    here the criterion is accuracy: the cpu backend must be as close to the float64 reference as the
    float32 reference is (within a factor 1.5, plus the contract's tolerance), image and every gradient.
    """
    g = torch.Generator().manual_seed(41)
    s = random_scene(41, n=200)
    s["scales"] = torch.exp(torch.empty(200, 3).uniform_(math.log(1e-5), math.log(50.0), generator=g))
    ref32, g32 = run(s, "torch")
    exact, g64 = run({k: (v.double() if torch.is_tensor(v) else v) for k, v in s.items()}, "torch")
    for level in LEVELS:
        with kernels(level):
            got, ggot = run(s, "cpu")
        assert torch.isfinite(got.colors).all()
        for name, a, b, e in (("colors", got.colors, ref32.colors, exact.colors), ("alphas", got.alphas, ref32.alphas, exact.alphas)):
            err_cpu, err_ref = (a.double() - e).abs().max(), (b.double() - e).abs().max()
            assert err_cpu <= 1.5 * err_ref + 1e-4, f"[{level}] {name}: cpu error {err_cpu:.3g} vs float32 reference {err_ref:.3g}"
        for k in g64:
            err_cpu, err_ref = (ggot[k].double() - g64[k]).abs().max(), (g32[k].double() - g64[k]).abs().max()
            assert err_cpu <= 1.5 * err_ref + 1e-4, f"[{level}] {k}: cpu error {err_cpu:.3g} vs float32 reference {err_ref:.3g}"


def test_depth_ties_keep_index_order():
    # Two Gaussians at exactly the same depth: the one with the lower index is in front (both backends).
    s = random_scene(50, n=2, cameras=1)
    s["means"] = torch.tensor([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]])
    s["scales"] = torch.full((2, 3), 0.5)
    s["quats"] = torch.tensor([[1.0, 0, 0, 0]] * 2)
    s["opacities"] = torch.tensor([0.9, 0.9])
    compare(s)


def test_threads_do_not_change_results():
    s = random_scene(60, n=600, cameras=2, width=90, height=70)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, g1 = run(s, "cpu")
        torch.set_num_threads(2)
        two, g2 = run(s, "cpu")
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one.colors, two.colors) and torch.equal(one.alphas, two.alphas)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


def test_backward_in_tile_groups_is_bitwise_the_same(monkeypatch):
    # On big scenes the backward processes tiles in groups that fit a slot budget (64 MiB); the sum of each
    # Gaussian's per-tile gradients must come out the same whatever the grouping.
    s = random_scene(61, n=500, cameras=2, width=70, height=50)
    _, whole = run(s, "cpu")
    monkeypatch.setenv("CPU_RASTERIZER_SLOT_BUDGET", "400")  # a few tiles per group
    _, grouped = run(s, "cpu")
    for k in whole:
        assert torch.equal(whole[k], grouped[k]), k


def test_means2d_grad_is_readable_and_radii_are_int32():
    s = random_scene(70, n=100, cameras=1)
    out, grads = run(s, "cpu")
    assert out.radii.dtype == torch.int32
    assert grads["means2d"] is not None and grads["means2d"].shape == (1, 100, 2)
    assert grads["means2d"][out.radii == 0].abs().max() == 0


# ------------------------------------------------------------------------------------------------
# Real data: gsplat's garden points


def test_garden_full_resolution_forward():
    # Forward only: a flipped decision matters where it can move a pixel by the tolerance (colours here
    # are below 1, so a change of alpha by 1e-4 bounds a colour change by 1e-4).
    s, ambiguous = without_ambiguous(garden_scene(), slice(0, 1), min_effect=1e-4)
    ref, _ = run(s, "torch", cameras=slice(0, 1), grad=False)
    got, _ = run(s, "cpu", cameras=slice(0, 1), grad=False)
    assert got.colors.shape == (1, 420, 648, 3)
    assert torch.equal(ref.radii, got.radii)
    assert_images_close("colors", got.colors, ref.colors, ambiguous)
    assert_images_close("alphas", got.alphas, ref.alphas, ambiguous)


def test_garden_gradients_reduced():
    # A third of the points at quarter resolution keeps the torch side to a few seconds.
    compare(garden_scene(every=3, downscale=4), cameras=slice(1, 3))


# ------------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_name_the_argument():
    s = random_scene(80, n=10, cameras=1)
    with torch.no_grad():
        m2, con, dep, rad = native.project_gaussians(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], 32, 32)
    feats = torch.rand(1, 10, 4)
    args = dict(means2d=m2, conics=con, features=feats, opacities=s["opacities"], depths=dep, radii=rad)

    def call(**over):
        a = dict(args, **over)
        return native.composite(a["means2d"], a["conics"], a["features"], a["opacities"], a["depths"], a["radii"], 32, 32)

    for name, bad, words in (
        ("means2d", m2.double(), ["means2d", "float32"]),
        ("conics", con[..., :2], ["conics", "shape"]),
        ("features", feats[0], ["features", "shape"]),
        ("opacities", torch.rand(7), ["opacities", "shape"]),
        ("radii", rad.float(), ["radii", "integer"]),
        ("depths", dep.to("meta"), ["depths", "cpu", "meta"]),
    ):
        with pytest.raises(ValueError) as e:
            call(**{name: bad})
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(ValueError, match="channels"):
        call(features=torch.rand(1, 10, 33))
    with pytest.raises(ValueError, match="tile_size"):
        native.composite(m2, con, feats, s["opacities"], dep, rad, 32, 32, tile_size=8)
    with pytest.raises(ValueError, match="quats"):
        native.project_gaussians(s["means"], s["quats"][:, :3], s["scales"], s["viewmats"], s["Ks"], 32, 32)
    with pytest.raises(ValueError, match="float32.*scales"):
        native.project_gaussians(s["means"], s["quats"], s["scales"].half(), s["viewmats"], s["Ks"], 32, 32)
    with pytest.raises(ValueError, match="viewmats.*camera gradients"):
        native.project_gaussians(s["means"], s["quats"], s["scales"], s["viewmats"].clone().requires_grad_(True),
                                 s["Ks"], 32, 32)
    # Through rasterize(): tensors on another device (meta stands in for CUDA here) are refused by name.
    meta = {k: s[k].to("meta") for k in PARAMS}
    with pytest.raises(ValueError, match="cpu backend needs CPU tensors"):
        rasterize(meta["means"], meta["quats"], meta["scales"], meta["opacities"], meta["colors"],
                  s["viewmats"].to("meta"), s["Ks"].to("meta"), 32, 32, sh_degree=3, backend="cpu")
    # float64 goes to the torch backend; the cpu backend says so
    with pytest.raises(ValueError, match="float32"):
        rasterize(*(s[k].double() for k in PARAMS), s["viewmats"].double(), s["Ks"].double(), 32, 32, sh_degree=3,
                  backend="cpu")


# ------------------------------------------------------------------------------------------------
# One build for every x86-64 CPU (issue 9): levels, selection, override


def test_the_best_level_this_cpu_runs_is_selected():
    levels = cpu_rasterizer.available_levels()
    assert levels, "no compiled level runs on this CPU"
    assert cpu_rasterizer.ISA == levels[-1] or "CPU_RASTERIZER_ISA" in os.environ
    assert native._C is cpu_rasterizer.load(cpu_rasterizer.ISA)
    if levels != ["generic"]:
        assert levels[0] == "x86-64"  # the baseline is always built and runs on every x86-64 CPU
        # Every level this CPU reports, up to v4, was built (setup.py's default) and is usable.
        want = [lv for lv in ("x86-64", "x86-64-v3", "x86-64-v4") if lv in cpu_rasterizer.cpu_levels()]
        assert levels == want


def test_avx2_and_avx512_builds_are_bitwise_identical():
    # Both have FMA (used in exp only) and the same operation order: the same bits on any CPU that runs
    # them, so training is reproducible across AVX2 and AVX-512 machines. (The baseline level, without
    # FMA, rounds exp differently and is held to the reference like the others.)
    fast = [lv for lv in LEVELS if lv in ("x86-64-v3", "x86-64-v4")]
    if len(fast) < 2:
        pytest.skip(f"this CPU runs only {LEVELS}: needs x86-64-v3 and x86-64-v4")
    s = garden_scene(every=3, downscale=4)
    outs = {}
    for level in fast:
        with kernels(level):
            outs[level] = run(s, "cpu", cameras=slice(1, 3))
    (o3, g3), (o4, g4) = outs["x86-64-v3"], outs["x86-64-v4"]
    assert torch.equal(o3.colors, o4.colors) and torch.equal(o3.alphas, o4.alphas) and torch.equal(o3.radii, o4.radii)
    for k in g3:
        assert torch.equal(g3[k], g4[k]), k


@pytest.mark.parametrize("asked, ok", [("x86-64", True), ("x86-64-v9", False), ("native", None)])
def test_override_level_and_its_errors(asked, ok):
    env = dict(os.environ, CPU_RASTERIZER_ISA=asked)
    code = "import internal.rasterize.native as n, cpu_rasterizer as c; print('ISA', c.ISA)"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(REPO))
    if ok is None:  # "native" exists only when built with CPU_RASTERIZER_LEVELS=...,native
        ok = cpu_rasterizer._built("native")
    if ok:
        assert res.returncode == 0 and f"ISA {asked}" in res.stdout, res.stderr
    else:
        last = res.stderr.strip().splitlines()[-1]
        assert res.returncode != 0 and "CPU_RASTERIZER_ISA" in last and asked in last, res.stderr


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_without_depth_the_colours_alphas_and_gradients_are_the_same(backend):
    # Training asks for no depth (one channel fewer to composite): everything else must be unchanged, and a
    # quaternion's norm must not matter.
    s = random_scene(23, n=200, cameras=2)
    args = (s["viewmats"], s["Ks"], s["width"], s["height"])
    outs, grads = [], []
    for with_depth, quat_scale in ((True, 1.0), (False, 1.0), (False, 3.0)):
        params = [s["means"].clone().requires_grad_(), (s["quats"] * quat_scale).requires_grad_(),
                  s["scales"].clone().requires_grad_(), s["opacities"].clone().requires_grad_(),
                  s["colors"].clone().requires_grad_()]
        out = rasterize(*params, *args, sh_degree=s["sh_degree"], backend=backend, with_depth=with_depth,
                        backgrounds=torch.tensor([0.2, 0.5, 0.9]))
        assert (out.depths is None) == (not with_depth)
        g_img = torch.randn(out.colors.shape, generator=torch.Generator().manual_seed(1))
        ((out.colors * g_img).sum() + out.alphas.sum()).backward()
        outs.append((out.colors.detach(), out.alphas.detach(), out.means2d.detach(), out.radii))
        grads.append([p.grad * (quat_scale if i == 1 else 1.0) for i, p in enumerate(params)])  # d/dq scales by 1/k
    # The native kernels composite each channel on its own: bit for bit. The reference's einsum is a batched
    # matmul whose blocking may differ with the channel count (CPU- and BLAS-dependent): within rounding there.
    same = torch.equal if backend == "cpu" else (lambda a, b: torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7))
    for a, b in zip(outs[0], outs[1]):
        assert same(a, b)
    for a, b in zip(grads[0], grads[1]):
        assert same(a, b)
    for a, b in zip(outs[1], outs[2]):  # a quaternion of norm 3: the same rotation, within rounding
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1], grads[2]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
