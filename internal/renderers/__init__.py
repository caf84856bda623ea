"""Renderers: nn.Modules that turn a GaussianModel and a camera into an image through rasterize().

VanillaRenderer is plain 3DGS and defines the hooks the LightningModule calls (vanilla.py);
AppearanceMLPRenderer adds per-group appearance (appearance.py). Both are importable by their short
names on the command line: `--model.renderer AppearanceMLPRenderer`.
"""

from .appearance import AppearanceMLPRenderer
from .vanilla import VanillaRenderer

__all__ = ["VanillaRenderer", "AppearanceMLPRenderer"]
