"""Stage 1 of the rasterizer (docs/rasterizer.md): Gaussians -> per-camera screen-space quantities.

Pure PyTorch; autograd gives the gradients. Every backend except gsplat uses this (or a native
implementation proven equal to it), so the numbers here define what "correct" means.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Real spherical-harmonics basis constants, as used by the original 3DGS (facts, not code).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N,4) wxyz quaternions (any norm) -> (N,3,3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances Sigma = (R S)(R S)^T, (N,3,3)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real SH of `degree` (0..3).

    coeffs: (..., K, 3) with K >= (degree+1)^2; dirs: (..., 3) unit vectors, broadcastable with coeffs[..., 0, :].
    Returns (..., 3), without the +0.5 offset.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    if coeffs.shape[-2] < num_sh_bases(degree):
        raise ValueError(f"SH coefficients have {coeffs.shape[-2]} bases; degree {degree} needs {num_sh_bases(degree)}")
    out = SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + SH_C2[0] * xy * coeffs[..., 4, :]
        + SH_C2[1] * yz * coeffs[..., 5, :]
        + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + SH_C2[3] * xz * coeffs[..., 7, :]
        + SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + SH_C3[1] * xy * z * coeffs[..., 10, :]
        + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )


def camera_centers(viewmats: Tensor) -> Tensor:
    """(C,4,4) world-to-camera -> (C,3) camera centres in world space: -R^T t."""
    rot = viewmats[:, :3, :3]
    return -(rot.transpose(-1, -2) @ viewmats[:, :3, 3:4])[..., 0]


def view_colors(means: Tensor, sh_coeffs: Tensor, sh_degree: int, viewmats: Tensor) -> Tensor:
    """Per-camera colours from SH: (C,N,3) = max(SH(dir) + 0.5, 0), dir = normalize(mean - campos)."""
    dirs = means[None] - camera_centers(viewmats)[:, None]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if sh_degree == 0:
        # No direction needed; skip the per-camera broadcast of the coefficients.
        return (SH_C0 * sh_coeffs[:, 0, :] + 0.5).clamp_min(0.0)[None].expand(viewmats.shape[0], -1, -1)
    return (eval_sh(sh_degree, sh_coeffs[None], dirs) + 0.5).clamp_min(0.0)


def tile_bounds(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int = 16):
    """Tile rectangles [x0,x1) x [y0,y1) touched by each Gaussian (docs/rasterizer.md), int64 tensors.

    means2d (...,2) float32, radii (...) int. Computed without gradients, in float32 as the spec says.
    """
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    m = means2d.detach().float()
    r = radii.float()
    ts = float(tile_size)
    x0 = torch.floor((m[..., 0] - r) / ts).clamp(0, tiles_x).long()
    x1 = torch.floor((m[..., 0] + r + (ts - 1)) / ts).clamp(0, tiles_x).long()
    y0 = torch.floor((m[..., 1] - r) / ts).clamp(0, tiles_y).long()
    y1 = torch.floor((m[..., 1] + r + (ts - 1)) / ts).clamp(0, tiles_y).long()
    return x0, x1, y0, y1


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    tile_size: int = 16,
):
    """Project N Gaussians into C cameras.

    Args:
        means (N,3), quats (N,4) wxyz, scales (N,3) activated; viewmats (C,4,4) world-to-camera; Ks (C,3,3).
    Returns:
        means2d (C,N,2) pixels, conics (C,N,3) = inverse 2D covariance (a, b, c),
        depths (C,N) camera-space z, radii (C,N) int32 (0 = culled).
    Culled Gaussians have finite (meaningless) means2d/conics and get zero gradient.
    """
    rot = viewmats[:, :3, :3]  # (C,3,3)
    trans = viewmats[:, :3, 3]  # (C,3)
    p = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # (C,N,3)
    z = p[..., 2]
    in_range = (z > near) & (z < far)
    # Culled entries are computed on a safe value so that neither forward nor backward makes NaNs.
    z_safe = torch.where(in_range, z, torch.ones_like(z))
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # (C,1)
    tan_x = 0.5 * width / fx
    tan_y = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_x
    lim_x_neg = cx / fx + 0.3 * tan_x
    lim_y_pos = (height - cy) / fy + 0.3 * tan_y
    lim_y_neg = cy / fy + 0.3 * tan_y
    u = p[..., 0] / z_safe
    v = p[..., 1] / z_safe
    tx = z_safe * torch.minimum(torch.maximum(u, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(v, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z_safe)
    jac = torch.stack(
        [
            fx / z_safe, zero, -fx * tx / (z_safe * z_safe),
            zero, fy / z_safe, -fy * ty / (z_safe * z_safe),
        ],
        dim=-1,
    ).reshape(*z.shape, 2, 3)  # (C,N,2,3)
    sigma = covariances(quats, scales)  # (N,3,3)
    jw = jac @ rot[:, None]  # (C,N,2,3)
    cov2d = jw @ sigma[None] @ jw.transpose(-1, -2)  # (C,N,2,2)
    a = cov2d[..., 0, 0] + 0.3
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + 0.3
    det = a * c - b * b
    valid = in_range & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)
    radii = screen_radii(a, b, c, means2d, valid, width, height, tile_size)
    return means2d, conics, z, radii


@torch.no_grad()
def screen_radii(a: Tensor, b: Tensor, c: Tensor, means2d: Tensor, valid: Tensor, width: int, height: int,
                 tile_size: int = 16) -> Tensor:
    """The contract's screen radius (docs/rasterizer.md), int32, 0 = culled.

    a, b, c: the dilated 2D covariance [[a, b], [b, c]] (0.3 px already added), (...); means2d (...,2);
    valid: False where the Gaussian is already culled (depth range, det <= 0). A Gaussian whose tile
    rectangle is empty is culled too.
    """
    radii = radius_from_cov2d(a, b, c, valid, width, height, tile_size)
    x0, x1, y0, y1 = tile_bounds(means2d, radii, width, height, tile_size)
    return torch.where((x1 - x0) * (y1 - y0) > 0, radii, torch.zeros_like(radii))


@torch.no_grad()
def radius_from_cov2d(a: Tensor, b: Tensor, c: Tensor, valid: Tensor, width: int, height: int,
                      tile_size: int = 16) -> Tensor:
    """ceil(3 sqrt(largest eigenvalue)) of the dilated 2D covariance, int32, 0 where not `valid`."""
    det = a * c - b * b
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radius = torch.ceil(3.0 * torch.sqrt(lam))
    radius = torch.where(valid & torch.isfinite(radius), radius, torch.zeros_like(radius))
    # Bound before the int cast: a Gaussian wider than any image is clamped to the tile grid anyway.
    radius = radius.clamp(max=float(4 * max(width, height) + 4 * tile_size))
    return radius.to(torch.int32)


def check_finite_tensor(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf); fix the input before rendering")


__all__ = [
    "SH_C0",
    "num_sh_bases",
    "quat_to_rotmat",
    "covariances",
    "eval_sh",
    "camera_centers",
    "view_colors",
    "tile_bounds",
    "screen_radii",
    "radius_from_cov2d",
    "project_gaussians",
    "check_finite_tensor",
]
