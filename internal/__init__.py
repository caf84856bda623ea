"""The public rendering API (the shape of pygs/splatstream's):

    import internal as gs
    splats = gs.load_from_ply("point_cloud.ply")
    images = gs.draw(splats, viewmats, Ks, width, height, near=0.01, far=1e3)   # (C,H,W,4) uint8

Importing this package stays light: torch and numpy only (no Lightning, no viser).
"""

from __future__ import annotations

import torch
from torch import Tensor

# The function stays at internal.rasterize.rasterize: re-exporting it here would shadow the subpackage.
from .rasterize import RenderOutput
from .rasterize import rasterize as _rasterize
from .splats import PlyFormatError, Splats, load_from_ply, save_ply

# Pixel-Gaussian work per chunk of cameras is bounded by bounding the pixels per chunk.
_PIXELS_PER_CHUNK = 1 << 22


def _as_batch(x, dims: int, name: str, dtype, device) -> Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.dim() == dims - 1:
        t = t[None]
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims - 1} or {dims} dimensions, got shape {tuple(t.shape)}")
    return t


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def draw(
    splats: Splats,
    viewmats,
    Ks,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    *,
    background=(0.0, 0.0, 0.0),
    sh_degree: int | None = None,
    backend: str = "auto",
    device=None,
) -> Tensor:
    """Render `splats` from C cameras into RGBA uint8 images.

    Args:
        splats: Splats (from load_from_ply or a trained model's export).
        viewmats: (C,4,4) or (4,4) world-to-camera matrices, OpenCV axes (x right, y down, z forward).
        Ks: (C,3,3) or (3,3) intrinsics; pixel centres at +0.5.
        width, height: image size shared by all cameras.
        near, far: depth range; Gaussians outside it are culled.
        background: RGB in [0,1] behind the splats (the alpha channel still gives coverage).
        sh_degree: SH degree to evaluate (default: all the file has).
        backend: "auto" (gsplat on CUDA, else our native CPU rasterizer), "cpu", "torch" or "gsplat".
        device: where to render (default: CUDA when available, else CPU).
    Returns:
        (C,height,width,4) uint8 tensor on `device`: RGB composited on `background`, A = coverage.
    Cameras are rendered in chunks, so memory stays bounded for any number of cameras.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    dtype = torch.float32
    viewmats = _as_batch(viewmats, 3, "viewmats", dtype, device)
    Ks = _as_batch(Ks, 3, "Ks", dtype, device)
    if viewmats.shape[0] != Ks.shape[0]:
        if Ks.shape[0] == 1:
            Ks = Ks.expand(viewmats.shape[0], 3, 3)
        else:
            raise ValueError(f"got {viewmats.shape[0]} viewmats but {Ks.shape[0]} Ks")
    if not (torch.isfinite(viewmats).all() and torch.isfinite(Ks).all()):
        raise ValueError("viewmats and Ks must be finite (found NaN or inf)")
    available = splats.sh_degree
    degree = available if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= available:
        raise ValueError(f"sh_degree={sh_degree} but the splats carry SH degree {available}")
    bg = torch.as_tensor(background, dtype=dtype, device=device).reshape(-1)
    if bg.numel() != 3:
        raise ValueError(f"background must be 3 values (RGB in [0,1]), got {tuple(background)}")
    means, quats, scales, opacities, sh = splats.to(device, dtype).activated()
    C = viewmats.shape[0]
    out = torch.empty((C, height, width, 4), dtype=torch.uint8, device=device)
    step = max(1, _PIXELS_PER_CHUNK // max(1, width * height))
    for start in range(0, C, step):
        r = _rasterize(
            means, quats, scales, opacities, sh, viewmats[start : start + step], Ks[start : start + step],
            width, height, near=near, far=far, sh_degree=degree, backgrounds=bg, backend=backend,
        )
        rgba = torch.cat([r.colors, r.alphas], dim=-1)
        out[start : start + step] = (rgba.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    return out


__all__ = ["Splats", "load_from_ply", "save_ply", "draw", "RenderOutput", "PlyFormatError", "default_device"]
