"""The web viewer (viser): server-side rendering through internal.loading.render_view, one render loop per
browser tab, browser mode, camera paths, and a live view of training (live.py).

Importing `internal` does not import this package (viser stays out of training and the draw API).
"""

from .app import PortInUseError, ViewerApp, ViewerOptions, check_port_free, free_port
from .sources import ModelSource, StaticSource

__all__ = ["ViewerApp", "ViewerOptions", "PortInUseError", "check_port_free", "free_port", "ModelSource", "StaticSource"]
