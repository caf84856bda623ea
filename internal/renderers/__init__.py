"""Renderers: nn.Modules that turn a GaussianModel and a camera into an image through rasterize().

Only the vanilla renderer exists so far; an appearance renderer (per-image-group colour MLP) will sit
beside it with the same forward signature.
"""

from .vanilla import VanillaRenderer

__all__ = ["VanillaRenderer"]
