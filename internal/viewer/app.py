"""The viser app: one server, one ClientSession (GUI + render loop) per connected browser tab.

    app = ViewerApp(StaticSource(load_model(path)), ViewerOptions(port=8080)).start()
    ...
    app.stop()

The scene (up direction, first view, training-camera frustums) is shared; everything a user changes
(render mode, SH degree, browser mode, camera path, ...) belongs to their own tab.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..loading import camera_entry_c2w, default_view, estimate_up, robust_bounds
from .sources import ModelSource

if TYPE_CHECKING:
    from .session import ClientSession


class PortInUseError(OSError):
    """The port the viewer should listen on is taken; the message names it and `--port`."""


@dataclass
class ViewerOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    background: tuple[float, float, float] | None = None  # None: the training background
    sh_degree: int | None = None  # None: all the model has
    image_format: str = "jpeg"  # jpeg | png (how frames travel to the page)
    show_cameras: bool = False
    up: np.ndarray | None = None  # None: from the training cameras (else +z)
    backend: str = "auto"
    max_resolution: int = 1920
    browser_budget: int = 300_000
    jpeg_quality_moving: int = 50
    jpeg_quality_still: int = 90
    still_delay: float = 0.2
    target_fps: float = 12.0
    save_dir: Path | None = None
    render_threads: int | str | None = "auto"  # threads per render: a number, None (every core) or "auto" (loop.py)
    port_option: str = "--port"  # how the error message names the option (--viewer_port under main.py)
    extra: dict = field(default_factory=dict)


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Raise PortInUseError if nothing can listen on host:port (viser would silently move to another port)."""
    bind_host = "" if host in ("0.0.0.0", "") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # The server sets SO_REUSEADDR too, so a port left in TIME_WAIT by an earlier run is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, int(port)))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                why = "is already in use (another viewer or server?)" if exc.errno == errno.EADDRINUSE else "needs privileges here"
                raise PortInUseError(f"port {port} on {host or '0.0.0.0'} {why}; pick another one with {option} N") from exc
            raise PortInUseError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and {option}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ViewerApp:
    def __init__(self, source: ModelSource, options: ViewerOptions | None = None):
        self.source = source
        self.options = options or ViewerOptions()
        self.server = None
        self.sessions: dict[int, "ClientSession"] = {}
        self._sessions_lock = threading.Lock()
        self.frustums = []
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        model = source.snapshot()
        self.scene_centre, half = robust_bounds(model.splats)
        self.scene_radius = float(np.linalg.norm(half))
        if self.options.up is not None:
            self.up = np.asarray(self.options.up, dtype=np.float64)
            self.up = self.up / np.linalg.norm(self.up)
        else:
            self.up = estimate_up(model.cameras)

    # ------------------------------------------------------------ life cycle
    def start(self) -> "ViewerApp":
        import viser

        opts = self.options
        check_port_free(opts.host, opts.port, opts.port_option)
        server = viser.ViserServer(host=opts.host, port=opts.port, label=self.source.title(), verbose=False)
        if server.get_port() != opts.port:  # lost a race for the port: viser moved on silently
            server.stop()
            raise PortInUseError(f"port {opts.port} is already in use; pick another one with {opts.port_option} N")
        self.server = server
        server.gui.configure_theme(control_width="large", dark_mode=False, show_logo=False, show_share_button=False)
        server.scene.set_up_direction(tuple(float(v) for v in self.up))
        self._set_initial_camera()
        self._add_training_cameras()
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)
        self._ticker = threading.Thread(target=self._tick, name="viewer-status", daemon=True)
        self._ticker.start()
        return self

    def url(self) -> str:
        host = "localhost" if self.options.host in ("0.0.0.0", "") else self.options.host
        return f"http://{host}:{self.options.port}"

    def stop(self) -> None:
        self._stopped.set()
        with self._sessions_lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for s in sessions:
            s.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def wait(self) -> None:
        """Block until Ctrl-C (the command-line viewer's main thread)."""
        try:
            while not self._stopped.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    # ------------------------------------------------------------ clients
    def _on_connect(self, client) -> None:
        from .session import ClientSession

        session = ClientSession(self, client)
        with self._sessions_lock:
            if self._stopped.is_set():
                return
            self.sessions[client.client_id] = session
        session.start()

    def _on_disconnect(self, client) -> None:
        with self._sessions_lock:
            session = self.sessions.pop(client.client_id, None)
        if session is not None:
            session.close()
        self.source_clients_changed()

    def source_clients_changed(self) -> None:
        hook = getattr(self.source, "clients_changed", None)
        if hook is not None:
            with self._sessions_lock:
                n = len(self.sessions)
            hook(n)

    def _tick(self) -> None:
        """Refresh each tab's status text a few times a second (stats of the last frame, training progress)."""
        while not self._stopped.wait(0.3):
            with self._sessions_lock:
                sessions = list(self.sessions.values())
            for s in sessions:
                try:
                    s.refresh_status()
                except Exception:  # a tab that just went away; its session is closed by the disconnect hook
                    pass

    # ------------------------------------------------------------ shared scene
    def _set_initial_camera(self) -> None:
        model = self.source.snapshot()
        c2w, fov = default_view(model)
        position = c2w[:3, 3]
        forward = c2w[:3, 2]
        # Orbit about the point straight ahead at the depth of the content's centre.
        depth = float(np.dot(self.scene_centre - position, forward))
        if not depth > 1e-6:
            depth = max(self.scene_radius, 1e-3)
        ic = self.server.initial_camera
        ic.position = tuple(float(v) for v in position)
        ic.look_at = tuple(float(v) for v in position + depth * forward)
        ic.up = tuple(float(v) for v in self.up)
        ic.fov = float(fov)
        ic.near = 0.01 * max(self.scene_radius, 1e-3)
        ic.far = 1000.0 * max(self.scene_radius, 1e-3)
        self.initial_view = (c2w, fov)

    def _add_training_cameras(self) -> None:
        cams = self.source.snapshot().cameras or []
        if not cams:
            return
        centres = np.stack([camera_entry_c2w(e)[:3, 3] for e in cams])
        spread = float(np.median(np.linalg.norm(centres - centres.mean(0), axis=1))) if len(cams) > 1 else self.scene_radius
        scale = 0.06 * max(spread, 1e-3)
        from ..camera_path import rotmat_to_quat

        for i, e in enumerate(cams):
            c2w = camera_entry_c2w(e)
            fov = 2.0 * math.atan(0.5 * int(e["height"]) / float(e["fy"]))
            handle = self.server.scene.add_camera_frustum(
                f"/training_cameras/{i:04d}", fov=fov, aspect=int(e["width"]) / int(e["height"]), scale=scale,
                thickness=0.08 * scale, color=(40, 90, 200), wxyz=rotmat_to_quat(c2w[:3, :3]), position=c2w[:3, 3],
                visible=self.options.show_cameras,
            )

            def jump(event, c2w=c2w, fov=fov):
                session = self.sessions.get(event.client.client_id) if event.client is not None else None
                if session is not None:
                    session.go_to(c2w, fov)

            handle.on_click(jump)
            self.frustums.append(handle)

    def set_cameras_visible(self, visible: bool) -> None:
        for h in self.frustums:
            h.visible = visible


__all__ = ["ViewerApp", "ViewerOptions", "PortInUseError", "check_port_free", "free_port"]
