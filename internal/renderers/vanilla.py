"""The 3DGS renderer: SH colours, one rasterize() call per camera batch.

It is also the interface every renderer offers the LightningModule (a renderer adds capabilities by
overriding these hooks, never by branches in the module):

    setup(gaussians, scene, stage)          once per Trainer stage, after the Gaussians exist: declare
                                            per-Gaussian parameters, size tables from the scene
    optimizer_groups()                      -> ({extra per-Gaussian parameter: lr}, [own param groups])
    begin_step(step, optimizer, max_steps)  at the top of every training step (schedules, warm-ups)
    forward(gaussians, cameras, background, sh_degree=None, with_depth=True) -> RenderOutput
                                            (with_depth=False: no expected depth, as training asks)
    render_for_evaluation(gaussians, cameras, background, image, mask) -> (RenderOutput, mask, protocol)
    export_splats(gaussians, appearance_group=None) -> Splats   what PLY exports write
    checkpoint_config()                     -> {"class_path", "init_args"}: rebuilds the renderer

Every constructor argument is kept as an attribute of the same name (checkpoint_config reads them).
"""

from __future__ import annotations

import inspect
from typing import Optional

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

    def forward(self, gaussians, cameras, background: Tensor, sh_degree: int | None = None,
                with_depth: bool = True) -> RenderOutput:
        """cameras: Cameras of one image size; background (3,) or (C,3). Returns RenderOutput."""
        return self._rasterize(gaussians, cameras, background, gaussians.sh_pair(), self._degree(gaussians, sh_degree),
                               with_depth=with_depth)

    # ---------------------------------------------------------------- shared by renderers
    @staticmethod
    def _degree(gaussians, sh_degree: int | None) -> int:
        return int(gaussians.active_sh_degree) if sh_degree is None else int(sh_degree)

    @staticmethod
    def _size(cameras) -> tuple[int, int]:
        width, height = int(cameras.width[0]), int(cameras.height[0])
        if len(cameras) > 1 and not (bool((cameras.width == width).all()) and bool((cameras.height == height).all())):
            raise ValueError("cameras of one render call must share an image size; render them one at a time")
        return width, height

    def _rasterize(self, gaussians, cameras, background: Tensor, colors: Tensor, sh_degree: int | None,
                   detach_geometry: bool = False, with_depth: bool = True) -> RenderOutput:
        """rasterize() the Gaussians' geometry with `colors`: SH coefficients (N,K,3) of degree
        `sh_degree`, or colours (C,N,3) / (N,3) with sh_degree=None."""
        width, height = self._size(cameras)
        # The raw quaternions: rasterize() normalises them itself (every backend), so get_quats()'s own
        # normalisation would only add its forward and backward ops (~3 ms per step at 112k Gaussians).
        geometry = (gaussians.get_means(), gaussians.quats, gaussians.get_scales(), gaussians.get_opacities())
        if detach_geometry:
            geometry = tuple(t.detach() for t in geometry)
        dtype = geometry[0].dtype
        return rasterize(
            *geometry,
            colors,
            cameras.viewmats().to(dtype),
            cameras.Ks().to(dtype),
            width,
            height,
            near=self.near,
            far=self.far,
            sh_degree=sh_degree,
            backgrounds=background,
            backend=self.backend,
            with_depth=with_depth,
        )

    # ---------------------------------------------------------------- hooks the module calls
    def setup(self, gaussians, scene=None, stage: str = "fit") -> None:
        """Once per Trainer stage (fit/validate/test/predict), after the Gaussians were created and before a
        checkpoint is loaded. `scene` is the data module's Scene (None without one)."""

    def optimizer_groups(self) -> tuple[dict[str, float], list[dict]]:
        """Learning rates of the per-Gaussian parameters this renderer added to the Gaussians, and param
        groups (dicts with "params", "lr", "name") of its own parameters. Plain 3DGS has neither."""
        return {}, []

    def begin_step(self, step: int, optimizer, max_steps: int) -> None:
        """At the top of training step `step` (optimizer steps taken so far), before rendering."""

    def render_for_evaluation(self, gaussians, cameras, background: Tensor, image: Tensor, mask: Optional[Tensor]):
        """Render a validation/test view and say which pixels to score and by which protocol.

        image (H,W,3) in [0,1] and mask (H,W) bool or None are the ground truth. Returns
        (RenderOutput, mask to score, protocol name or None); None means the plain protocol (the whole
        image, nothing fitted at evaluation) and adds no protocol column to the metrics.
        """
        return self(gaussians, cameras, background), mask, None

    def export_splats(self, gaussians, appearance_group: Optional[str] = None):
        """The Splats a PLY export writes (INRIA fields, pre-activation)."""
        if appearance_group is not None:
            raise ValueError(f"appearance group {appearance_group!r} was asked for, but {type(self).__name__} has no "
                             "appearance groups (train with --model.renderer AppearanceMLPRenderer); drop --appearance_group")
        return gaussians.to_splats()

    @property
    def group_names(self) -> list[str]:
        """Appearance groups the renderer can render (none for plain 3DGS)."""
        return []

    def checkpoint_config(self) -> dict:
        """{"class_path", "init_args"} that rebuild this renderer (its weights are in the state dict)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"class_path": f"{type(self).__module__}.{type(self).__name__}",
                "init_args": {n: getattr(self, n) for n in names}}
