"""The `gsplat` backend: CUDA rasterization through the gsplat package (pinned 1.5.3).

gsplat ships its CUDA sources and compiles them on first use (torch's JIT: nvcc, minutes); scripts/setup.sh
does that once on a machine with an NVIDIA GPU (internal/rasterize/gsplat_build.py). This module is only
imported once resolve_backend() has checked that CUDA is available.

Settings chosen to match our contract (docs/rasterizer.md): classic (not antialiased) mode, eps2d 0.3
(the 0.3 px dilation), "RGB+ED" (expected depth as a fourth channel), unpacked (C,N) outputs so that
`means2d` is the (C,N,2) tensor whose gradient densification reads, no absgrad. Where gsplat 1.5.3 differs
from the contract and the difference cannot be removed from outside its kernels, docs/rasterizer.md
("The gsplat backend") lists it: chiefly its tile box (the bounding box of each Gaussian's alpha >= 1/255
ellipse, not the 3-sigma circle's tiles) and its alpha clamp 0.999 (ours 0.99). The radii returned follow
the contract's rule (ceil(3 sqrt(largest eigenvalue))) on gsplat's own 2D covariances, positive exactly
where gsplat draws the Gaussian, so densification reads the same quantity on every backend.
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import lru_cache

import torch
from torch import Tensor

from .projection import radius_from_cov2d

GSPLAT_VERSION = "1.5.3"


def ensure_ninja_on_path() -> None:
    """torch's JIT runs `ninja` from PATH every time gsplat loads its kernels, cached or not. In a virtual
    environment that is not activated (`.venv/bin/python main.py ...`) the venv's own ninja is not on PATH:
    put the interpreter's bin/ there when it holds one."""
    here = os.path.dirname(sys.executable)
    if shutil.which("ninja") is None and shutil.which("ninja", path=here):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


@lru_cache(maxsize=1)
def load_gsplat():
    """Import gsplat and its compiled CUDA kernels (compiling them now if setup did not), or say what is missing."""
    try:
        import gsplat
    except ImportError as exc:
        raise RuntimeError(
            f"the gsplat backend needs the gsplat package: run scripts/setup.sh, or "
            f"pip install -c constraints.txt gsplat=={GSPLAT_VERSION}"
        ) from exc
    ensure_ninja_on_path()
    from gsplat.cuda._backend import _C  # compiles on first import when nothing is cached (minutes)

    if _C is None:
        raise RuntimeError(
            "gsplat found no CUDA toolkit, so its CUDA kernels are not compiled: install nvcc for CUDA "
            f"{torch.version.cuda} (e.g. the CUDA toolkit in /usr/local/cuda, or set CUDA_HOME), then run "
            "scripts/setup.sh (README: 'Training on an NVIDIA GPU'); or train on the CPU with --trainer.accelerator cpu"
        )
    return gsplat


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near, far, sh_degree,
                     backgrounds: Tensor, tile_size: int, with_depth: bool = True):
    from . import RenderOutput

    if means.dtype != torch.float32:
        raise ValueError(
            f"the gsplat backend computes in float32; got {means.dtype} tensors: use .float(), or backend='torch' for float64"
        )
    C, N = viewmats.shape[0], means.shape[0]
    if N == 0 or C == 0:
        # gsplat's kernels divide by N; with nothing to draw the answer is the background. means2d stays in
        # the graph (as on the other backends) so that callers can retain_grad() on it.
        rgb = backgrounds[:, None, None, :].expand(C, height, width, 3).clone()
        zeros = means.new_zeros((C, height, width, 1))
        means2d = means[None, :, :2].expand(C, N, 2) * 0.0
        return RenderOutput(rgb, zeros, zeros.clone(), means2d,
                            torch.zeros((C, N), dtype=torch.int32, device=means.device), width, height)
    gsplat = load_gsplat()
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
        radius_clip=0.0,
        eps2d=0.3,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=None,
        render_mode="RGB+ED" if with_depth else "RGB",
        sparse_grad=False,
        absgrad=False,
        rasterize_mode="classic",
    )
    rgb = render[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
    # "ED" is already accumulated depth / max(alpha, 1e-10), as our finish stage computes it.
    depth = torch.where(alphas > 0, render[..., 3:], torch.zeros_like(alphas)) if with_depth else None
    means2d = meta["means2d"]  # the tensor gsplat rasterized from: retain_grad() on it gives the pixel gradient
    radii = _contract_radii(meta["radii"], meta["conics"], width, height, tile_size)
    return RenderOutput(rgb, alphas, depth, means2d, radii, width, height)


@torch.no_grad()
def _contract_radii(gs_radii: Tensor, conics: Tensor, width: int, height: int, tile_size: int) -> Tensor:
    """Our radius rule (projection.radius_from_cov2d) on gsplat's dilated 2D covariances, where gsplat draws.

    gsplat 1.5.3 returns per-axis radii (C,N,2) from its opacity-aware box and leaves means2d/conics
    unwritten (uninitialised memory) where it culled; those entries are 0 here. Where gsplat draws a
    Gaussian the radius is positive even if the contract's tile rectangle is empty (a Gaussian just off
    the image whose faint rim reaches in): radius > 0 means "in this render" on every backend.
    """
    visible = (gs_radii > 0).all(dim=-1) if gs_radii.dim() == 3 else gs_radii > 0
    ca, cb, cc = conics.unbind(-1)  # inverse covariance (A, B, C) = (c, -b, a) / det
    inv_det = ca * cc - cb * cb  # = 1 / det
    valid = visible & (inv_det > 0)
    safe = torch.where(valid, inv_det, torch.ones_like(inv_det))
    a, b, c = cc / safe, -cb / safe, ca / safe
    radii = radius_from_cov2d(a, b, c, valid, width, height, tile_size)
    return torch.where(valid, radii.clamp_min(1), radii)


__all__ = ["rasterize_gsplat", "load_gsplat", "ensure_ninja_on_path", "GSPLAT_VERSION"]
