"""One differentiable rasterizer over plain tensors, several backends (docs/rasterizer.md).

    out = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                    near=0.01, far=1e10, sh_degree=3, backgrounds=None, backend="auto")
    out.colors (C,H,W,3), out.alphas (C,H,W,1), out.depths (C,H,W,1) expected depth (None with
    with_depth=False: training reads only the colours, and one channel fewer is cheaper to composite),
    out.means2d (C,N,2) (call .retain_grad() before backward to read the densification gradient),
    out.radii (C,N) int32 (0 = culled).

Backends: "torch" (pure PyTorch reference), "cpu" (our C++ extension), "gsplat" (CUDA), and "auto"
(gsplat when the tensors are on a CUDA device, else cpu; torch with a warning when the extension is
not built).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .projection import project_gaussians, view_colors

BACKENDS = ("auto", "torch", "cpu", "gsplat")


@dataclass
class RenderOutput:
    colors: Tensor  # (C,H,W,3), composited on the background
    alphas: Tensor  # (C,H,W,1)
    depths: Optional[Tensor]  # (C,H,W,1) expected depth (0 where nothing was drawn); None when not asked for
    means2d: Tensor  # (C,N,2) screen-space means in pixels
    radii: Tensor  # (C,N) int32 screen-space radius, 0 = culled
    width: int
    height: int


def native_available() -> bool:
    try:
        from . import native  # noqa: F401

        return native.available()
    except ImportError:
        return False


_warned_fallback = False


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" into a concrete backend, and refuse a backend that cannot run here."""
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return "gsplat"
        if native_available():
            return "cpu"
        if not _warned_fallback:
            warnings.warn(
                "the native CPU rasterizer (submodules/cpu_rasterizer) is not built; falling back to the much slower "
                "torch reference. Run scripts/setup.sh to build it.",
                stacklevel=3,
            )
            _warned_fallback = True
        return "torch"
    if backend == "gsplat":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the gsplat backend needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here); "
                "use backend='cpu' (or 'auto') on this machine"
            )
        if device.type != "cuda":
            raise ValueError(f"the gsplat backend needs CUDA tensors; got tensors on {device}: move them with .cuda()")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"the cpu backend needs CPU tensors; got tensors on {device}: use backend='gsplat' or .cpu()")
        if not native_available():
            raise RuntimeError(
                "the native CPU rasterizer is not installed: run scripts/setup.sh (it builds submodules/cpu_rasterizer "
                "with pip --no-build-isolation against the pinned torch)"
            )
    return backend


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree):
    n = means.shape[0] if means.dim() == 2 else -1
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be (N,3), got {tuple(means.shape)}")
    for name, t, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be (C,4,4) world-to-camera, got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be (C,3,3) with C={viewmats.shape[0]}, got {tuple(Ks.shape)}")
    if sh_degree is None:
        if not (colors.shape == (n, 3) or colors.shape == (viewmats.shape[0], n, 3)):
            raise ValueError(f"colors must be (N,3) or (C,N,3) when sh_degree is None, got {tuple(colors.shape)}")
    elif colors.dim() != 3 or colors.shape[0] != n or colors.shape[2] != 3:
        raise ValueError(f"SH coefficients must be (N,K,3), got {tuple(colors.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    for name, t in (("quats", quats), ("scales", scales), ("opacities", opacities), ("colors", colors), ("viewmats", viewmats), ("Ks", Ks)):
        if t.dtype != means.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, means has {means.dtype}: use one floating dtype")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device}, means on {means.device}: put every input on one device")


def _joined(colors):
    """SH coefficients given as the model's pair (sh0 (N,1,3), shN (N,K-1,3)) as one (N,K,3) tensor."""
    return torch.cat(list(colors), dim=1) if isinstance(colors, (tuple, list)) else colors


def shade(means: Tensor, sh_coeffs, sh_degree: int, viewmats: Tensor, backend: str = "auto") -> Tensor:
    """(C,N,3) per-camera colours max(SH(dir) + 0.5, 0) of the Gaussians, computed as `rasterize` would
    with `backend` (the native kernel for "cpu", torch ops otherwise). For renderers that change the
    colours before rasterizing them with sh_degree=None; differentiable w.r.t. means and sh_coeffs
    ((N,K,3), or the pair (sh0, shN) as in `rasterize`)."""
    if resolve_backend(backend, means.device) == "cpu":
        from . import native

        return native.view_colors(means, sh_coeffs, sh_degree, viewmats)
    return view_colors(means, _joined(sh_coeffs), sh_degree, viewmats)


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 1e10,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    backend: str = "auto",
    tile_size: int = 16,
    with_depth: bool = True,
) -> RenderOutput:
    """Render N Gaussians into C cameras.

    Args:
        means (N,3); quats (N,4) wxyz, any norm; scales (N,3) activated (positive); opacities (N,) in [0,1];
        colors: SH coefficients (N,K,3) with `sh_degree` the active degree, or colours (N,3) / (C,N,3)
            with sh_degree=None; SH coefficients may also be the pair (sh0 (N,1,3), shN (N,K-1,3)) as
            GaussianModel keeps them (the cpu backend reads them in place, the others join them);
        viewmats (C,4,4) world-to-camera (OpenCV); Ks (C,3,3);
        backgrounds: (3,) or (C,3) colour behind the Gaussians (default black).
        with_depth: also composite the expected depth (out.depths); False leaves it None, and the colours,
            alphas and every gradient are the same.
    Returns:
        RenderOutput (see the module docstring for shapes).
    """
    width, height = int(width), int(height)
    backend = resolve_backend(backend, means.device)
    if sh_degree is not None and isinstance(colors, (tuple, list)):
        if len(colors) != 2:
            raise ValueError(f"SH coefficients as a pair must be (sh0, shN), got {len(colors)} tensors")
        for name, t in zip(("sh0", "shN"), colors):
            _check_inputs(means, quats, scales, opacities, t, viewmats, Ks, width, height, sh_degree)
            if name == "sh0" and t.shape[1] != 1:
                raise ValueError(f"sh0 must be (N,1,3), got {tuple(t.shape)}")
        if backend != "cpu":
            colors = _joined(colors)
    else:
        _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree)
    C = viewmats.shape[0]
    if backgrounds is None:
        backgrounds = means.new_zeros((C, 3))
    else:
        backgrounds = torch.as_tensor(backgrounds, dtype=means.dtype, device=means.device)
        backgrounds = backgrounds.expand(C, 3) if backgrounds.dim() == 1 else backgrounds
    if backend == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near, far, sh_degree, backgrounds, tile_size,
            with_depth,
        )
    if backend == "cpu":
        from . import native

        project = native.project_gaussians
        shade = native.view_colors
        composite = native.composite
    else:
        project, shade, composite = project_gaussians, view_colors, reference.composite
    means2d, conics, depths, radii = project(means, quats, scales, viewmats, Ks, width, height, near, far, tile_size)
    if sh_degree is None:
        cam_colors = colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)
    else:
        cam_colors = shade(means, colors, sh_degree, viewmats)
    # A depth channel gives the expected depth. (The channels are composited independently, so leaving it
    # out changes nothing else.)
    features = torch.cat([cam_colors, depths[..., None]], dim=-1) if with_depth else cam_colors
    render, alphas = composite(means2d, conics, features, opacities, depths, radii, width, height, tile_size)
    rgb = render[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
    depth = None
    if with_depth:
        depth = torch.where(alphas > 0, render[..., 3:] / alphas.clamp_min(1e-10), torch.zeros_like(alphas))
    return RenderOutput(rgb, alphas, depth, means2d, radii, width, height)


__all__ = ["rasterize", "shade", "RenderOutput", "BACKENDS", "resolve_backend", "native_available"]
