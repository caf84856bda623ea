"""The `gsplat` backend: CUDA rasterization through the gsplat package (1.5.x).

gsplat JIT-compiles its CUDA kernels on first use and cannot rasterize without a GPU, so this module
is only imported once resolve_backend() has checked that CUDA is available. Its settings mirror our
contract (docs/rasterizer.md): classic (not antialiased) mode, 0.3 px dilation, expected depth.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near, far, sh_degree,
                     backgrounds: Tensor, tile_size: int):
    from . import RenderOutput

    try:
        import gsplat
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("the gsplat backend needs the gsplat package: pip install gsplat==1.5.3") from exc
    render, alphas, meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=0.3,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=None,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    rgb = render[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
    depth = torch.where(alphas > 0, render[..., 3:], torch.zeros_like(alphas))
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5 gives per-axis radii (C,N,2); ours is the larger one
        radii = radii.max(dim=-1).values
    return RenderOutput(rgb, alphas, depth, meta["means2d"], radii.to(torch.int32), width, height)
