"""The camera-path panel of a tab: keyframes from the current view, preview, JSON save/load, mp4 render.

Files go under the viewer's save folder (camera_paths/*.json, videos/*.mp4); names typed in the page
are file names inside those folders, never paths elsewhere on the server.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np

from ..camera_path import CameraPath, CameraPathError, CameraPose, interpolate, rotmat_to_quat, write_video
from .frames import CameraState, render_frame
from .loop import RENDER_LOCK


class UnsafeNameError(ValueError):
    pass


def safe_file(folder: Path, name: str, suffix: str) -> Path:
    """folder/name(+suffix): a plain file name, no folders, so a page cannot write anywhere else."""
    name = (name or "").strip()
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UnsafeNameError(f"{name!r} is not a plain file name (no folders, not hidden); files go to {folder}")
    if not name.endswith(suffix):
        name += suffix
    return folder / name


class CameraPathPanel:
    def __init__(self, session):
        self.session = session
        gui = session.client.gui
        self.path = CameraPath(keyframes=[], fps=30.0, seconds=4.0, width=1280, height=720)
        self._handles = []
        self._draw_lock = threading.Lock()  # several widgets' callbacks may redraw at once
        self._preview_stop = threading.Event()
        self._render_cancel = threading.Event()
        self._busy = False
        self.last_video: Path | None = None
        self.last_json: Path | None = None
        with gui.add_folder("Camera path", expand_by_default=False):
            self.info = gui.add_markdown("No keyframes yet: move the camera and press *Add keyframe*.")
            self.add = gui.add_button("Add keyframe", hint="the current view becomes the next keyframe")
            self.undo = gui.add_button("Remove last keyframe")
            self.clear = gui.add_button("Clear keyframes")
            self.seconds = gui.add_number("Duration (s)", 4.0, min=0.1, step=0.1)
            self.fps = gui.add_number("FPS", 30, min=1, max=120, step=1)
            self.loop = gui.add_checkbox("Loop", False)
            self.width = gui.add_number("Video width", 1280, min=16, max=7680, step=2)
            self.height = gui.add_number("Video height", 720, min=16, max=4320, step=2)
            self.preview = gui.add_button("Preview", hint="fly the path in this tab (press again to stop)")
            self.name = gui.add_text("File name", "path")
            self.save = gui.add_button("Save JSON")
            self.load = gui.add_button("Load JSON")
            self.render = gui.add_button("Render video (mp4)")
            self.cancel = gui.add_button("Cancel render", visible=False)
            self.progress = gui.add_progress_bar(0.0, visible=False)
        self.add.on_click(lambda _e: self.add_keyframe())
        self.undo.on_click(lambda _e: self._edit(lambda k: k[:-1]))
        self.clear.on_click(lambda _e: self._edit(lambda k: []))
        for h in (self.seconds, self.fps, self.loop, self.width, self.height):
            h.on_update(lambda _e: self._sync_options())
        self.preview.on_click(lambda _e: self.toggle_preview())
        self.save.on_click(lambda _e: self._report(self.save_json))
        self.load.on_click(lambda _e: self._report(self.load_json))
        self.render.on_click(lambda _e: self.start_render())
        self.cancel.on_click(lambda _e: self._render_cancel.set())

    # ------------------------------------------------------------ keyframes
    def folder(self, kind: str) -> Path:
        return self.session.app.source.save_dir() / kind

    def add_keyframe(self) -> None:
        cam = self.session.loop.camera
        if cam is None:
            return
        self._edit(lambda k: k + [CameraPose(cam.c2w.copy(), math.degrees(cam.fov_y))])

    def _edit(self, change) -> None:
        self.path.keyframes = change(list(self.path.keyframes))
        self.path.frames = None
        self._draw()

    def _sync_options(self) -> None:
        try:
            self.path.seconds = max(0.1, float(self.seconds.value))
            self.path.fps = max(1.0, float(self.fps.value))
            self.path.loop = bool(self.loop.value)
            self.path.width = max(16, int(self.width.value))
            self.path.height = max(16, int(self.height.value))
        except (TypeError, ValueError):
            return
        self._draw()

    def _draw(self) -> None:
        """Keyframe frustums and the interpolated path in this tab's scene."""
        with self._draw_lock:
            self._draw_locked()

    def _draw_locked(self) -> None:
        scene = self.session.client.scene
        for h in self._handles:
            h.remove()
        self._handles = []
        keys = self.path.keyframes
        n = len(keys)
        self.info.content = (f"{n} keyframe{'s' if n != 1 else ''} · {self.path.seconds:g} s at {self.path.fps:g} fps"
                             f"{' · loop' if self.path.loop else ''}") if n else "No keyframes yet: move the camera and press *Add keyframe*."
        if not n:
            return
        scale = 0.04 * max(self.session.app.scene_radius, 1e-3)
        for i, k in enumerate(keys):
            self._handles.append(scene.add_camera_frustum(
                f"/camera_path/key_{i:03d}", fov=math.radians(k.fov_y_deg), aspect=self.path.width / self.path.height,
                scale=scale, thickness=0.06 * scale, color=(230, 120, 20), wxyz=rotmat_to_quat(k.c2w[:3, :3]),
                position=k.c2w[:3, 3]))
        if n >= 2:
            c2ws, _ = interpolate(self.path, num_frames=max(2, min(400, self.path.num_frames())))
            pts = c2ws[:, :3, 3]
            if self.path.loop:
                pts = np.concatenate([pts, pts[:1]])
            segs = np.stack([pts[:-1], pts[1:]], axis=1)
            self._handles.append(scene.add_line_segments("/camera_path/spline", segs, (230, 120, 20),
                                                         thickness=0.03 * scale))

    # ------------------------------------------------------------ preview
    def toggle_preview(self) -> None:
        if self._busy:
            self._preview_stop.set()
            return
        if not self.path.keyframes:
            self._notify("Camera path", "Add keyframes first.")
            return
        self._preview_stop.clear()
        threading.Thread(target=self._preview, name="camera-path-preview", daemon=True).start()

    def _preview(self) -> None:
        self._busy = True
        try:
            c2ws, fovs = interpolate(self.path)
            dt = 1.0 / self.path.fps
            start = time.monotonic()
            for i, (c2w, fov) in enumerate(zip(c2ws, fovs)):
                if self._preview_stop.is_set() or self.session.closed:
                    break
                self.session.go_to(c2w, fov)
                delay = start + (i + 1) * dt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            self._busy = False

    # ------------------------------------------------------------ files
    def save_json(self) -> Path:
        path = safe_file(self.folder("camera_paths"), self.name.value, ".json")
        self.path.save(path)
        self.last_json = path
        return path

    def load_json(self) -> Path:
        path = safe_file(self.folder("camera_paths"), self.name.value, ".json")
        loaded = CameraPath.load(path)
        self.path = loaded
        self.seconds.value, self.fps.value, self.loop.value = loaded.seconds, loaded.fps, loaded.loop
        self.width.value, self.height.value = loaded.width, loaded.height
        self.path = loaded  # the setters above may have re-synced from the widgets; keep the file's path
        self._draw()
        self.last_json = path
        return path

    def _report(self, action) -> None:
        try:
            path = action()
        except (CameraPathError, UnsafeNameError, OSError, ValueError) as exc:
            self._notify("Camera path", str(exc), error=True)
            return
        self._notify("Camera path", f"{path}")

    def _notify(self, title: str, body: str, error: bool = False) -> None:
        if not self.session.closed:
            self.session.client.add_notification(title, body, auto_close_seconds=8.0, color="red" if error else None)

    # ------------------------------------------------------------ video
    def start_render(self) -> threading.Thread | None:
        if self._busy:
            return None
        if not self.path.keyframes and not self.path.frames:
            self._notify("Camera path", "Add keyframes first.", error=True)
            return None
        try:
            out = safe_file(self.folder("videos"), self.name.value, ".mp4")
        except UnsafeNameError as exc:
            self._notify("Camera path", str(exc), error=True)
            return None
        self._render_cancel.clear()
        t = threading.Thread(target=self._render_video, args=(out,), name="camera-path-video", daemon=True)
        t.start()
        return t

    def _render_video(self, out: Path) -> None:
        self._busy = True
        session = self.session
        self.render.disabled = True
        self.cancel.visible = True
        self.progress.visible = True
        self.progress.value = 0.0
        path = self.path
        width, height = int(path.width), int(path.height)
        c2ws, fovs = interpolate(path)
        settings = session.settings
        n = len(c2ws)

        def frames():
            for i, (c2w, fov) in enumerate(zip(c2ws, fovs)):
                if self._render_cancel.is_set() or session.closed:
                    raise _Cancelled()
                with RENDER_LOCK:  # interleaves with the tabs' interactive frames
                    img = render_frame(session.app.source.snapshot(), CameraState(c2w, float(fov), width, height),
                                       settings, width, height)
                self.progress.value = 100.0 * (i + 1) / n
                yield img

        try:
            write_video(frames(), out, fps=path.fps)
            self.last_video = out
            self._notify("Video written", f"{out} ({n} frames, {width}x{height}, {path.fps:g} fps)")
        except _Cancelled:
            self._notify("Video", "Render cancelled; nothing was written.")
        except Exception as exc:  # disk full, a bad setting: say so in the page
            self._notify("Video failed", f"{type(exc).__name__}: {exc}", error=True)
        finally:
            self._busy = False
            if not session.closed:
                self.render.disabled = False
                self.cancel.visible = False
                self.progress.visible = False

    def close(self) -> None:
        self._preview_stop.set()
        self._render_cancel.set()


class _Cancelled(Exception):
    pass


__all__ = ["CameraPathPanel", "safe_file", "UnsafeNameError"]
