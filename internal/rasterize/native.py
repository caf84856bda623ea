"""The `cpu` backend: our C++/OpenMP extension (submodules/cpu_rasterizer), with hand-written backwards.

Contract used by internal.rasterize.rasterize (docs/rasterizer.md), same signatures and results as the
torch stages (projection.py, reference.py) within float rounding:

  available() -> bool
  project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, tile_size)
      -> means2d (C,N,2), conics (C,N,3), depths (C,N), radii (C,N) int32          stage 1, native
  view_colors(means, sh_coeffs, sh_degree, viewmats) -> (C,N,3)                   stage 1 colours, native
  composite(means2d, conics, features, opacities, depths, radii, width, height, tile_size=16)
      -> render (C,H,W,D), alpha (C,H,W,1)                                          stage 2, native

Each native op is a torch.autograd.Function whose backward is C++. Gradients flow to means2d, conics,
features and opacities (stage 2) and to means, quats, scales and SH coefficients (stage 1); camera
gradients (viewmats, Ks) are not computed by this backend: inputs that require them are refused.

Inputs must be float32 CPU tensors (radii: any integer dtype); anything else is a ValueError that
names the argument. Threads: torch.get_num_threads() (set with torch.set_num_threads).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import SH_C0, num_sh_bases

try:
    from cpu_rasterizer import _C  # type: ignore  (the module of the best x86-64 level this CPU runs)
except ImportError:  # not built: rasterize(backend="auto") falls back to torch with a warning
    _C = None
except RuntimeError as exc:  # cpu_rasterizer.ISAError: CPU_RASTERIZER_ISA asks for a level that cannot run here
    from ..errors import ConfigError

    raise ConfigError(f"CPU_RASTERIZER_ISA: {exc}") from None

TILE_SIZE = 16
MAX_CHANNELS = 32


def available() -> bool:
    return _C is not None


def _require_built() -> None:
    if _C is None:
        raise RuntimeError(
            "the native CPU rasterizer is not installed: run scripts/setup.sh, or "
            "`.venv/bin/pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer`"
        )


def _check_tensor(name: str, t, shape: tuple, *, integer: bool = False) -> None:
    """ValueError naming `name` unless t is a CPU tensor of float32 (or integer) dtype and `shape`.

    `shape` holds ints or None (any size) per dimension.
    """
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"the cpu rasterizer backend needs CPU tensors, but {name} is on {t.device}: "
            "move the inputs with .cpu(), or use backend='gsplat' for CUDA tensors"
        )
    if integer:
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor (int32), got {t.dtype}")
    elif t.dtype != torch.float32:
        raise ValueError(
            f"the cpu rasterizer backend computes in float32, but {name} is {t.dtype}: "
            "convert with .float(), or use backend='torch' (the reference also runs in float64)"
        )
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ",".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _check_size(width, height, tile_size) -> tuple[int, int]:
    if int(tile_size) != TILE_SIZE:
        raise ValueError(f"the cpu rasterizer backend supports tile_size=16 only, got tile_size={tile_size}")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    return width, height


def _check_cameras(viewmats: Tensor, Ks: Tensor) -> int:
    _check_tensor("viewmats", viewmats, (None, 4, 4))
    C = viewmats.shape[0]
    _check_tensor("Ks", Ks, (C, 3, 3))
    for name, t in (("viewmats", viewmats), ("Ks", Ks)):
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name} requires grad, but the cpu backend does not compute camera gradients: "
                f"pass {name}.detach(), or use backend='torch'"
            )
    return C


# ------------------------------------------------------------------------------------------------
# Stage 1: projection


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, tile_size):
        means2d, conics, depths, radii = _C.project_forward(
            means, quats, scales, viewmats, Ks, width, height, near, far, tile_size
        )
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.args = (width, height, near, far, tile_size)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii):
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        width, height, near, far, tile_size = ctx.args
        g_means, g_quats, g_scales = _C.project_backward(
            means, quats, scales, viewmats, Ks, width, height, near, far, tile_size,
            g_means2d.contiguous(), g_conics.contiguous(), g_depths.contiguous(),
        )
        return g_means, g_quats, g_scales, None, None, None, None, None, None, None


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
    """Native stage 1; same arguments and results as projection.project_gaussians."""
    _require_built()
    width, height = _check_size(width, height, tile_size)
    _check_tensor("means", means, (None, 3))
    N = means.shape[0]
    _check_tensor("quats", quats, (N, 4))
    _check_tensor("scales", scales, (N, 3))
    _check_cameras(viewmats, Ks)
    return _Project.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(), viewmats.detach().contiguous(),
        Ks.detach().contiguous(), width, height, float(near), float(far), TILE_SIZE,
    )


class _ViewColors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, sh0, shN, degree, viewmats):
        ctx.save_for_backward(means, sh0, shN, viewmats)
        ctx.degree = degree
        return _C.sh_forward(means, sh0, shN, degree, viewmats)

    @staticmethod
    def backward(ctx, g_colors):
        means, sh0, shN, viewmats = ctx.saved_tensors
        g_means, g_sh0, g_shN = _C.sh_backward(means, sh0, shN, ctx.degree, viewmats, g_colors.contiguous())
        return g_means, g_sh0, g_shN, None, None


class _ZeroGradTo(torch.autograd.Function):
    """Returns `x` (copied) and gives `other` an exact zero gradient: at SH degree 0 the higher bands are
    not read, yet they must get the zero gradient they got as part of one (N,K,3) tensor, so that Adam
    steps them as before (its step count and moment decay), i.e. training is unchanged bit for bit."""

    @staticmethod
    def forward(ctx, x, other):
        ctx.shape = other.shape
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g, g.new_zeros(ctx.shape)


def _packed_bands(t: Tensor) -> Tensor:
    """`t` (N,B,3) as the kernel reads it (bands and channels packed; any stride between Gaussians)."""
    return t if t.stride(2) == 1 and (t.shape[1] <= 1 or t.stride(1) == 3) else t.contiguous()


def view_colors(means: Tensor, sh_coeffs, sh_degree: int, viewmats: Tensor) -> Tensor:
    """Native per-camera SH colours; same arguments and results as projection.view_colors.

    sh_coeffs: (N,K,3), or the pair (sh0 (N,1,3), shN (N,K-1,3)) as the model keeps them: the kernel
    reads the two where they are, so training does not concatenate them (and split their gradient) every step.
    """
    _require_built()
    _check_tensor("means", means, (None, 3))
    pair = isinstance(sh_coeffs, (tuple, list))
    if pair:
        sh0, shN = sh_coeffs
        _check_tensor("sh0", sh0, (means.shape[0], 1, 3))
        _check_tensor("shN", shN, (means.shape[0], None, 3))
    else:
        _check_tensor("colors", sh_coeffs, (means.shape[0], None, 3))
        sh0, shN = sh_coeffs[:, :1], sh_coeffs[:, 1:]
    if not isinstance(viewmats, Tensor) or viewmats.dim() != 3:
        _check_tensor("viewmats", viewmats, (None, 4, 4))
    _check_tensor("viewmats", viewmats, (viewmats.shape[0], 4, 4))
    if not 0 <= int(sh_degree) <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
    sh_degree = int(sh_degree)
    if 1 + shN.shape[1] < num_sh_bases(sh_degree):
        raise ValueError(
            f"SH coefficients have {1 + shN.shape[1]} bases; degree {sh_degree} needs {num_sh_bases(sh_degree)}"
        )
    if sh_degree == 0:
        # View independent: one tiny elementwise op, the same as the reference's (no native call needed).
        colors = (SH_C0 * sh0[:, 0, :] + 0.5).clamp_min(0.0)[None].expand(viewmats.shape[0], -1, -1)
        if pair and shN.requires_grad and torch.is_grad_enabled():
            return _ZeroGradTo.apply(colors, shN)  # (one (N,K,3) tensor: its select already does this)
        return colors
    if viewmats.requires_grad and torch.is_grad_enabled():
        raise ValueError("viewmats requires grad, but the cpu backend does not compute camera gradients")
    return _ViewColors.apply(means.contiguous(), _packed_bands(sh0), _packed_bands(shN), sh_degree,
                             viewmats.detach().contiguous())


# ------------------------------------------------------------------------------------------------
# Stage 2: compositing


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, depths, radii, width, height):
        out = _C.composite_forward(means2d, conics, features, opacities, depths, radii, width, height, TILE_SIZE)
        render, alpha, state = out[0], out[1], out[2:]
        # state: per-pixel last contributor and final transmittance, and each camera's tile lists.
        ctx.save_for_backward(means2d, conics, features, opacities, depths, radii, *state)
        ctx.size = (width, height)
        return render, alpha

    @staticmethod
    def backward(ctx, g_render, g_alpha):
        means2d, conics, features, opacities, depths, radii, *state = ctx.saved_tensors
        width, height = ctx.size
        g_means2d, g_conics, g_features, g_opacities = _C.composite_backward(
            means2d, conics, features, opacities, depths, radii, width, height, TILE_SIZE, state,
            g_render.contiguous(), g_alpha.contiguous(),
        )
        return g_means2d, g_conics, g_features, g_opacities, None, None, None, None


def composite(
    means2d: Tensor,
    conics: Tensor,
    features: Tensor,
    opacities: Tensor,
    depths: Tensor,
    radii: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
):
    """Native stage 2; same arguments and results as reference.composite.

    Args:
        means2d (C,N,2), conics (C,N,3), features (C,N,D) with D <= 32, opacities (C,N) or (N,),
        depths (C,N) (sort keys only, no gradient), radii (C,N) integer (0 = culled).
    Returns:
        render (C,H,W,D) = sum_i f_i alpha_i T_i, alpha (C,H,W,1) = 1 - T_final.
    """
    _require_built()
    width, height = _check_size(width, height, tile_size)
    _check_tensor("means2d", means2d, (None, None, 2))
    C, N = means2d.shape[:2]
    _check_tensor("conics", conics, (C, N, 3))
    _check_tensor("features", features, (C, N, None))
    if not 1 <= features.shape[2] <= MAX_CHANNELS:
        raise ValueError(f"features must have 1..{MAX_CHANNELS} channels, got {features.shape[2]}")
    if isinstance(opacities, Tensor) and opacities.dim() == 1:
        _check_tensor("opacities", opacities, (N,))
    else:
        _check_tensor("opacities", opacities, (C, N))
    _check_tensor("depths", depths, (C, N))
    _check_tensor("radii", radii, (C, N), integer=True)
    return _Composite.apply(
        means2d.contiguous(), conics.contiguous(), features.contiguous(), opacities.contiguous(),
        depths.detach().contiguous(), radii.detach().to(torch.int32).contiguous(), width, height,
    )


__all__ = ["available", "project_gaussians", "view_colors", "composite", "TILE_SIZE"]
