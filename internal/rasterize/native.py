"""The `cpu` backend: our C++/OpenMP extension (submodules/cpu_rasterizer).

Contract used by internal.rasterize.rasterize (docs/rasterizer.md):
  available() -> bool
  project_gaussians(...) and view_colors(...) with the signatures of projection.py (a native version
  may replace the torch one once it is proven equal to it);
  composite(means2d, conics, features, opacities, depths, radii, width, height, tile_size) with the
  signature and results of reference.composite, as a torch.autograd.Function with a C++ backward.
"""

from __future__ import annotations

from .projection import project_gaussians, view_colors  # noqa: F401  (torch stage 1 until a native one exists)

try:
    from cpu_rasterizer import _C  # type: ignore
except ImportError:  # not built: rasterize(backend="auto") falls back to torch with a warning
    _C = None


def available() -> bool:
    return _C is not None


def composite(means2d, conics, features, opacities, depths, radii, width, height, tile_size=16):
    raise NotImplementedError("the native compositing op is not written yet")
