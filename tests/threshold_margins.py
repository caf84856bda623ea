"""Which decisions of the rasterizer lie within float32 rounding of a threshold (docs/rasterizer.md).

The rasterizer's results jump at a few thresholds: the integer radius and the tile rectangle decide
which tiles a Gaussian is drawn in; per pixel, `power > 0` and `alpha < 1/255` skip a Gaussian, the
0.99 clamp cuts its gradient, and `T < 1e-4` stops the pixel. Its gradients also have kinks where the
SH colour is clamped at 0 and where the projection clamps the tangent to the view frustum. Two correct
float32 implementations whose values differ by rounding can decide such a case differently, and which
one rounds which way depends on the summation order of the BLAS and vector kernels, i.e. on the CPU
(issue 9: Intel's MKL path vs AMD's). Those cases cannot be compared; all others must agree tightly.

So this module finds them from the exact (float64) values and a first-order bound on the float32
error of each value, CPU-independently:

* `ambiguous_gaussians`: Gaussians with a radius, tile-rectangle, frustum-clamp or SH-clamp decision
  within rounding of its threshold in some camera. Tests drop them from the scene (which changes no
  other Gaussian's projection decisions).
* `ambiguous_pixels`: pixels where a compositing decision is within rounding of its threshold. Tests
  give them zero weight in the loss and leave them out of the image comparison; gradients are then
  independent of how those decisions fall, since a pixel's decisions only affect that pixel's outputs.

The error bounds are at least 4x the largest float32 error measured against float64 (see each), and
tests assert that only a small fraction of Gaussians and pixels is excluded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from internal.rasterize import reference
from internal.rasterize.projection import camera_centers, eval_sh, project_gaussians

EPS32 = 2.0 ** -24  # unit roundoff of float32
SAFETY = 2.0  # on top of bounds that are already about twice the largest error measured


def _project64(scene, cams):
    d = torch.float64
    return project_gaussians(scene["means"].to(d), scene["quats"].to(d), scene["scales"].to(d),
                             scene["viewmats"][cams].to(d), scene["Ks"][cams].to(d), scene["width"], scene["height"])


def _near_integer(x: Tensor, margin: Tensor) -> Tensor:
    return (x - torch.round(x)).abs() < margin


def ambiguous_gaussians(scene: dict, cams=slice(None)) -> Tensor:
    """(N,) bool: Gaussians with a projection or colour decision within float32 rounding of its threshold."""
    with torch.no_grad():
        m2, con, _, radii = _project64(scene, cams)
        Ks = scene["Ks"][cams].double()
        W, H = scene["width"], scene["height"]
        visible = radii > 0
        # The radius before ceil, from the 2D covariance (the conic's inverse: exact enough in float64).
        # Its float32 error, measured against float64 on the garden scene and three random scenes (65k
        # Gaussians, 3D covariances conditioned up to 400): at most 31 ulps of it; the bound is 64.
        ca, cb, cc = con.unbind(-1)
        det_c = ca * cc - cb * cb
        a, b, c = cc / det_c, -cb / det_c, ca / det_c
        mid = 0.5 * (a + c)
        r_real = 3.0 * torch.sqrt(mid + torch.sqrt(torch.clamp(mid * mid - (a * c - b * b), min=0.1)))
        e_r = SAFETY * 64 * EPS32 * r_real
        clamp = 4 * max(W, H) + 4 * 16  # the contract bounds the radius; beyond it both sides clamp alike
        amb = visible & _near_integer(r_real, e_r) & (r_real < clamp)
        # Tile rectangle: floor of (mean -+ radius) / 16, clamped to [0, tiles]; means2d is good to a few
        # ulps of its value. A floor that flips between k-1 and k matters only when 1 <= k <= tiles.
        r = radii.double()
        e_m = SAFETY * 8 * EPS32 * (m2.abs() + r[..., None] + 16) / 16
        for k, tiles in ((0, (W + 15) // 16), (1, (H + 15) // 16)):
            for v in ((m2[..., k] - r) / 16, (m2[..., k] + r + 15) / 16):
                inside = (torch.round(v) >= 1) & (torch.round(v) <= tiles)
                amb |= visible & inside & _near_integer(v, e_m[..., k])
        # Frustum clamp of the tangent (a kink of the projection's gradient), limits as in the contract.
        fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
        u, v = (m2[..., 0] - cx) / fx, (m2[..., 1] - cy) / fy
        for t, lim in ((u, (W - cx) / fx + 0.15 * W / fx), (-u, cx / fx + 0.15 * W / fx),
                       (v, (H - cy) / fy + 0.15 * H / fy), (-v, cy / fy + 0.15 * H / fy)):
            amb |= visible & ((t - lim).abs() < SAFETY * 16 * EPS32 * (lim.abs() + t.abs()))
        # SH colour clamp max(sum + 0.5, 0) (a kink of the colour's gradient); the SH basis functions
        # are at most ~3 in magnitude on unit directions, which bounds the terms of the sum.
        if scene.get("sh_degree") is not None:
            deg = scene["sh_degree"]
            coeffs = scene["colors"].double()[:, : (deg + 1) ** 2]
            vm = scene["viewmats"][cams].double()
            dirs = scene["means"].double()[None] - camera_centers(vm)[:, None]
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
            unclamped = eval_sh(deg, coeffs[None], dirs) + 0.5  # (C,N,3)
            terms = 3.0 * coeffs.abs().sum(1)[None] + 0.5
            amb |= visible & ((unclamped.abs() < SAFETY * 32 * EPS32 * terms).any(-1))
        return amb.any(0)


def ambiguous_pixels(scene: dict, cams=slice(None), min_effect: float = 0.0, alpha_max: float = 0.99,
                     radii_fn=None) -> Tensor:
    """(C,H,W) bool: pixels where a compositing decision lies within float32 rounding of its threshold,
    for rasterize() on `scene` (the projection's float32 error included).

    min_effect > 0 keeps only the decisions that can move the pixel's alpha by at least that much (a
    flipped Gaussian changes alpha by at most 2 alpha_i T_i: its own term and the scaling of the later
    ones); comparisons of forward values with a tolerance use it. Gradient comparisons use 0: any flip
    changes the gradient of the Gaussians involved. alpha_max and radii_fn(means2d, conics, depths, radii,
    width, height) -> radii describe another rasterizer's rules (gsplat's: tests/raster_helpers.py)."""
    with torch.no_grad():
        m2, con, depths, radii = _project64(scene, cams)
        if radii_fn is not None:
            radii = radii_fn(m2, con, depths, radii, scene["width"], scene["height"])
        return ambiguous_composite_pixels(m2, con, scene["opacities"], depths, radii, scene["width"], scene["height"],
                                          min_effect, alpha_max)


def ambiguous_composite_pixels(means2d, conics, opacities, depths, radii, width, height, min_effect=0.0,
                               alpha_max=0.99) -> Tensor:
    """(C,H,W) bool: the same for compositing alone, on given screen-space inputs (opacities (N,) or (C,N))."""
    with torch.no_grad():
        C, N = radii.shape
        m2, con = means2d.double(), conics.double()
        op = opacities.double().expand(C, N) if opacities.dim() == 1 else opacities.double()
        out = torch.zeros(C, height * width, dtype=torch.bool)
        for ci in range(C):
            out[ci] = _pixels_of_camera(m2[ci], con[ci], op[ci], depths[ci].double(), radii[ci], width, height, min_effect,
                                        alpha_max)
        return out.reshape(C, height, width)


def _pixels_of_camera(m2, con, op, depths, radii, W, H, min_effect, alpha_max, tile=16, max_elements=1 << 22):
    ids, offsets = reference.bin_gaussians(m2, radii, depths, W, H, tile)
    tiles_x = (W + tile - 1) // tile
    flags = torch.zeros(H * W, dtype=torch.bool)
    counts = offsets[1:] - offsets[:-1]
    busy = torch.nonzero(counts > 0)[:, 0]
    busy = busy[torch.argsort(counts[busy])]  # similar list lengths batch with little padding
    loc = torch.arange(tile * tile)
    start = 0
    while start < busy.numel():
        end = start + 1
        while end < busy.numel() and (end - start + 1) * tile * tile * int(counts[busy[end]]) <= max_elements:
            end += 1
        tiles = busy[start:end]
        start = end
        K = int(counts[tiles].max())
        pos = offsets[tiles][:, None] + torch.arange(K)[None]
        valid = torch.arange(K)[None] < counts[tiles][:, None]  # (B,K)
        g = ids[pos.clamp(max=ids.numel() - 1)]
        col = (tiles % tiles_x)[:, None] * tile + loc[None] % tile  # (B,P)
        row = (tiles // tiles_x)[:, None] * tile + loc[None] // tile
        pix_ok = (col < W) & (row < H)
        flags[(row * W + col)[pix_ok][_batch_flags(m2, con, op, g, valid, col, row, min_effect, alpha_max)[pix_ok]]] = True
    return flags


def _batch_flags(m2, con, op, g, valid, col, row, min_effect, alpha_max):
    """(B,P) bool for B tiles of P pixels with Gaussians g (B,K) in depth order."""
    # Only pairs with alpha above ~1/255 can be drawn or lie near any threshold (the error bounds below
    # are far below 0.5 in log alpha): find them in float32 (its error is far below that margin), then
    # compute everything in float64 for those alone. Pixels are independent and nonzero() lists the
    # pairs pixel by pixel in depth order, so T is a cumulative sum of log(1 - alpha) per pixel.
    px, py = col.float() + 0.5, row.float() + 0.5
    m2f, conf = m2.float(), con.float()
    dx = m2f[g, 0][:, None] - px[..., None]  # (B,P,K)
    dy = m2f[g, 1][:, None] - py[..., None]
    power = -0.5 * (conf[g, 0][:, None] * dx * dx + conf[g, 2][:, None] * dy * dy) - conf[g, 1][:, None] * dx * dy
    cand = (power + torch.log(op[g]).float()[:, None] > _LOG_ALPHA_MIN - 0.5) & valid[:, None]
    b, p, k = torch.nonzero(cand, as_tuple=True)
    del dx, dy, power, cand
    gk = g[b, k]
    dx = m2[gk, 0] - (col[b, p].double() + 0.5)
    dy = m2[gk, 1] - (row[b, p].double() + 0.5)
    ca, cb, cc = con[gk, 0], con[gk, 1], con[gk, 2]
    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
    log_a = torch.log(op[gk]) + power
    # float32 error of power, from the rounding of its own terms and of means2d (a few ulps of the pixel
    # coordinate) through its gradient. Measured against float64 on the garden scene and three random
    # scenes (1.2M pixel-Gaussian pairs near the thresholds, whether the screen-space values were
    # projected in float32 or given): at most 7.5 times this unit; the bound is 16.
    S = 0.5 * (ca.abs() * dx * dx + cc.abs() * dy * dy) + (cb * dx * dy).abs()
    grad = (ca * dx + cb * dy).abs() + (cb * dx + cc * dy).abs()
    e_p = SAFETY * 16 * EPS32 * (S + grad * (m2[gk].abs().sum(-1) + 1) + 1)
    alpha = torch.exp(log_a).clamp(max=alpha_max)
    drawn = (power <= 0) & (alpha >= 1.0 / 255.0)
    log1m = torch.where(drawn, torch.log1p(-alpha), torch.zeros_like(alpha))
    # Relative float32 error of T after each Gaussian: each factor (1 - alpha) carries alpha's error.
    e_factor = torch.where(drawn, alpha * e_p / torch.clamp(1.0 - alpha, min=1e-3) + 2 * EPS32, torch.zeros_like(alpha))
    pixel = b * col.shape[1] + p
    log_t_after = _segment_cumsum(log1m, pixel)
    e_logT = _segment_cumsum(e_factor, pixel)  # e_p already carries the safety factor
    log_t_before = log_t_after - log1m
    near = ((power.abs() < e_p)
            | ((log_a - _LOG_ALPHA_MIN).abs() < e_p)
            | ((log_a - math.log(alpha_max)).abs() < e_p)
            | (drawn & ((log_t_after - _LOG_T_MIN).abs() < e_logT)))
    near &= log_t_before >= _LOG_T_MIN  # decisions after the pixel stopped are never made
    if min_effect > 0:
        near &= 2 * alpha * torch.exp(log_t_before) >= min_effect
    out = torch.zeros(col.shape, dtype=torch.bool)
    out[b[near], p[near]] = True
    return out


def _segment_cumsum(x: Tensor, seg: Tensor) -> Tensor:
    """Inclusive cumulative sum of x restarting wherever the (sorted) segment id changes."""
    if x.numel() == 0:
        return x
    total = torch.cumsum(x, 0)
    idx = torch.arange(x.numel())
    first = torch.ones_like(seg, dtype=torch.bool)
    first[1:] = seg[1:] != seg[:-1]
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    return total - total[start] + x[start]


_LOG_ALPHA_MIN = math.log(1.0 / 255.0)
_LOG_T_MIN = math.log(1e-4)


__all__ = ["ambiguous_gaussians", "ambiguous_pixels", "ambiguous_composite_pixels"]
