"""The 3DGS renderer: SH colours, one rasterize() call per camera batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import check
from ..rasterize import BACKENDS, RenderOutput, rasterize


class VanillaRenderer(nn.Module):
    """Render a GaussianModel from Cameras.

    Args:
        backend: rasterizer backend, "auto" (gsplat on CUDA, else our native CPU rasterizer), "cpu",
            "torch" or "gsplat".
        near, far: depth range of visible Gaussians.
    """

    def __init__(self, backend: str = "auto", near: float = 0.01, far: float = 1e10):
        super().__init__()
        check(backend in BACKENDS, "--model.renderer.init_args.backend", f"{backend!r} is not a rasterizer backend; choose one of {', '.join(BACKENDS)}")
        check(0 < near < far, "--model.renderer.init_args.near/far", f"must satisfy 0 < near < far, got near={near}, far={far}")
        self.backend = backend
        self.near = near
        self.far = far

    def forward(self, gaussians, cameras, background: Tensor, sh_degree: int | None = None) -> RenderOutput:
        """cameras: Cameras of one image size; background (3,) or (C,3). Returns RenderOutput."""
        width, height = int(cameras.width[0]), int(cameras.height[0])
        if len(cameras) > 1 and not (bool((cameras.width == width).all()) and bool((cameras.height == height).all())):
            raise ValueError("cameras of one render call must share an image size; render them one at a time")
        degree = int(gaussians.active_sh_degree) if sh_degree is None else int(sh_degree)
        return rasterize(
            gaussians.get_means(),
            gaussians.get_quats(),
            gaussians.get_scales(),
            gaussians.get_opacities(),
            gaussians.get_sh(),
            cameras.viewmats().to(gaussians.get_means().dtype),
            cameras.Ks().to(gaussians.get_means().dtype),
            width,
            height,
            near=self.near,
            far=self.far,
            sh_degree=degree,
            backgrounds=background,
            backend=self.backend,
        )
