"""One browser tab: its controls, its render loop, browser mode, screenshots and camera path."""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..camera_path import rotmat_to_quat
from ..rasterize import resolve_backend
from .browser import browser_splats
from .frames import RENDER_MODES, CameraState, DisplaySettings, MovingQuality, encode_image, render_frame
from .loop import RENDER_LOCK, ClientGone, RenderLoop, full_frame_size

_NO_GROUP = "(none)"


class ClientSession:
    def __init__(self, app, client):
        self.app = app
        self.client = client
        self.closed = False
        opts = app.options
        model = app.source.snapshot()
        self.max_sh = model.splats.sh_degree
        self.settings = DisplaySettings(
            sh_degree=opts.sh_degree, background=opts.background, max_resolution=opts.max_resolution,
            backend=opts.backend, appearance_group=(list(model.appearance_groups) or [None])[0],
        )
        self.last_frame: tuple[np.ndarray, bool, CameraState] | None = None
        self.frames_sent = 0
        self.last_error: str | None = None
        self.last_screenshot: Path | None = None
        self._splats_handle = None
        self._browser_count = 0
        self._status_text = ""
        self._last_model = None
        self._lock = threading.Lock()
        self.loop = RenderLoop(
            render=self._render,
            send=self._send,
            full_size=full_frame_size(lambda: self.settings.max_resolution),
            still_delay=opts.still_delay,
            model_version=app.source.version,
            refresh_seconds=lambda: getattr(app.source, "refresh_seconds", 1.0),
            on_error=self._on_error,
            quality=MovingQuality(target_seconds=1.0 / opts.target_fps,
                                  min_fraction=0.1 if app.source.ordered_by_visibility else 1.0),
            threads=opts.render_threads,
            name=f"render-client-{client.client_id}",
        )
        self._build_gui(model)

    # ------------------------------------------------------------ GUI
    def _build_gui(self, model) -> None:
        gui = self.client.gui
        opts = self.app.options
        self.status_md = gui.add_markdown("Connecting…")
        self.live_panel = self.app.source.build_gui(self) if hasattr(self.app.source, "build_gui") else None

        with gui.add_folder("Render"):
            self.mode = gui.add_dropdown("Mode", RENDER_MODES, initial_value="rgb", hint="rgb, expected depth or coverage")
            self.max_depth = gui.add_number("Max depth (0 = auto)", 0.0, min=0.0, step=0.01, visible=False,
                                            hint="far end of the depth colour map; 0 picks the 98th percentile")
            deg = self.max_sh if opts.sh_degree is None else int(opts.sh_degree)
            self.sh = gui.add_slider("SH degree", 0, max(1, self.max_sh), 1, deg, disabled=self.max_sh == 0,
                                     hint=f"this model carries SH degree 0..{self.max_sh}")
            self.scale = gui.add_slider("Scaling modifier", 0.05, 2.0, 0.05, 1.0)
            bg = model.background if opts.background is None else opts.background
            self.bg = gui.add_rgb("Background", tuple(int(round(255 * c)) for c in bg))
            self.near = gui.add_number("Near", 0.01, min=0.0, step=0.001)
            self.far = gui.add_number("Far", 1e6, min=0.0, step=1.0)
            self.max_res = gui.add_slider("Max resolution", 256, 3840, 64, min(3840, max(256, opts.max_resolution)),
                                          hint="long side of the still frame in pixels")
            # An appearance model always draws some group's look: the first until another is picked.
            groups = list(model.appearance_groups)
            self.group = gui.add_dropdown("Appearance group", groups or [_NO_GROUP], initial_value=(groups or [_NO_GROUP])[0],
                                          visible=bool(groups), hint="colour the scene as in this group's photos")

        with gui.add_folder("Browser mode", expand_by_default=False):
            self.browser = gui.add_checkbox("Render in the browser", False,
                                            hint="send the Gaussians to the page; its GPU draws them")
            self.budget = gui.add_number("Gaussian budget", int(opts.browser_budget), min=1000, step=1000,
                                         hint="the most visible Gaussians are sent, up to this many")
            gui.add_markdown("The page draws the splats itself: smooth at any speed, but with **DC colour only** "
                             "(no view-dependent colour) and at most the budget's most visible Gaussians.")

        with gui.add_folder("Scene"):
            self.show_cams = gui.add_checkbox("Training cameras", self.app.options.show_cameras,
                                              visible=bool(self.app.frustums),
                                              hint="click a camera to jump to its view")
            self.reset_view = gui.add_button("Reset view")
            self.shot = gui.add_button("Screenshot (PNG)", hint="renders the current view at full resolution")

        from .paths_panel import CameraPathPanel

        self.paths = CameraPathPanel(self)

        for handle in (self.sh, self.scale, self.near, self.far, self.max_depth):
            handle.on_update(lambda _e: self._settings_changed(moving=True))
        for handle in (self.mode, self.bg, self.max_res, self.group):
            handle.on_update(lambda _e: self._settings_changed(moving=False))
        self.mode.on_update(lambda _e: setattr(self.max_depth, "visible", self.mode.value == "depth"))
        self.browser.on_update(lambda _e: self._set_browser_mode(self.browser.value))
        self.budget.on_update(lambda _e: self.browser.value and self._set_browser_mode(True))
        self.show_cams.on_update(lambda _e: self.app.set_cameras_visible(self.show_cams.value))
        self.reset_view.on_click(lambda _e: self.go_to(*self.app.initial_view))
        self.shot.on_click(lambda _e: self.screenshot())
        self.client.camera.on_update(self._camera_changed)

    def _settings_changed(self, moving: bool) -> None:
        try:
            far = float(self.far.value)
            near = float(self.near.value)
            self.settings = self.settings.with_(
                mode=self.mode.value,
                sh_degree=int(self.sh.value) if self.max_sh > 0 else 0,
                scaling_modifier=float(self.scale.value),
                background=tuple(c / 255.0 for c in self.bg.value),
                near=near,
                far=far if far > near else near + 1e-3,
                max_depth=float(self.max_depth.value),
                max_resolution=int(self.max_res.value),
                appearance_group=None if self.group.value == _NO_GROUP else self.group.value,
            )
        except (TypeError, ValueError) as exc:  # a half-typed number: keep the last good settings
            self.last_error = f"setting ignored: {exc}"
            return
        if self.browser.value and self._splats_handle is not None and moving:
            self._set_browser_mode(True)  # the scaling modifier changes the splats the page draws
        self.loop.invalidate(moving=moving)

    # ------------------------------------------------------------ rendering
    def start(self) -> None:
        self.loop.start()
        try:
            self._camera_changed(self.client.camera)
        except AssertionError:  # no camera message yet; on_update will deliver it
            pass

    def _camera_changed(self, camera) -> None:
        if self.closed:
            return
        width, height = int(camera.image_width or 640), int(camera.image_height or 480)
        self.loop.update_camera(CameraState.from_wxyz(camera.wxyz, camera.position, camera.fov, width, height))

    def _render(self, camera: CameraState, width: int, height: int, fraction: float) -> np.ndarray:
        model = self.app.source.snapshot()
        self._last_model = model
        return render_frame(model, camera, self.settings, width, height, fraction)

    def _send(self, img: np.ndarray, moving: bool, camera: CameraState) -> None:
        if self.closed:
            raise ClientGone()
        opts = self.app.options
        quality = opts.jpeg_quality_moving if moving else opts.jpeg_quality_still
        try:
            if opts.image_format == "png":
                self.client.scene.set_background_image(img, format="png")
            else:
                self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=int(quality))
        except Exception:
            if self.closed:
                raise ClientGone()
            raise
        self.last_frame = (img, moving, camera)
        self.frames_sent += 1

    def _on_error(self, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        if msg != self.last_error:
            print(f"[viewer] client {self.client.client_id}: render failed: {msg}")
            if not isinstance(exc, (ValueError, RuntimeError)):
                traceback.print_exception(exc)
        self.last_error = msg

    def go_to(self, c2w: np.ndarray, fov: float) -> None:
        """Move this tab's camera to a camera-to-world pose (OpenCV axes) and vertical fov."""
        cam = self.client.camera
        with self.client.atomic():
            cam.wxyz = rotmat_to_quat(np.asarray(c2w)[:3, :3])
            cam.position = np.asarray(c2w)[:3, 3]
            cam.fov = float(fov)
        state = self.loop.camera
        width, height = (state.width, state.height) if state is not None else (640, 480)
        self.loop.update_camera(CameraState(np.asarray(c2w, dtype=np.float64), float(fov), width, height))

    # ------------------------------------------------------------ browser mode
    def _set_browser_mode(self, on: bool) -> None:
        with self._lock:
            if self._splats_handle is not None:
                self._splats_handle.remove()
                self._splats_handle = None
            if on:
                self.loop.set_paused(True)
                model = self.app.source.snapshot()
                centers, covs, rgbs, opacities = browser_splats(model, int(self.budget.value), self.settings.scaling_modifier)
                self.client.scene.set_background_image(None)
                self._splats_handle = self.client.scene.add_gaussian_splats(
                    "/browser_splats", centers=centers, covariances=covs, rgbs=rgbs, opacities=opacities)
                self._browser_count = len(centers)
            else:
                self._browser_count = 0
                self.loop.set_paused(False)

    # ------------------------------------------------------------ screenshot
    def screenshot(self) -> Path | None:
        camera = self.loop.camera
        if camera is None:
            return None
        width, height = full_frame_size(lambda: self.settings.max_resolution)(camera)
        with RENDER_LOCK:
            img = render_frame(self.app.source.snapshot(), camera, self.settings, width, height)
        png = encode_image(img, "png")
        path = self.app.source.save_dir() / "screenshots" / f"screenshot-{time.strftime('%Y%m%d-%H%M%S')}-{self.client.client_id}.png"
        atomic_write(path, lambda f: f.write(png))
        self.last_screenshot = path
        if not self.closed:
            self.client.send_file_download(path.name, png)
            self.client.add_notification("Screenshot saved", f"{path} ({width}x{height})", auto_close_seconds=6.0)
        return path

    # ------------------------------------------------------------ status
    def status_markdown(self) -> str:
        # The model of the last frame: asking a live source for a fresh snapshot here would copy the
        # Gaussians a few times a second for a line of text.
        model = self._last_model or self.app.source.snapshot()
        s = self.loop.stats
        lines = [f"**{self.app.source.title()}**"]
        if self.live_panel is not None:
            lines.append(self.live_panel.status_line())
        if self._splats_handle is not None:
            lines.append(f"Browser mode: {self._browser_count:,} of {model.num_gaussians:,} Gaussians in the page "
                         "(DC colour)")
        elif s.frames:
            kind = "moving" if s.moving else "still"
            lod = f" · {s.fraction:.0%} of the Gaussians" if s.fraction < 1.0 else ""
            lines.append(f"Render {s.render_ms:.0f} ms + send {s.send_ms:.0f} ms · {s.width}×{s.height} {kind}{lod}")
            if s.fps and time.monotonic() - s.moving_at < 3.0:
                lines.append(f"Moving: {s.fps:.1f} fps")
        else:
            lines.append("Waiting for the first frame…")
        device = model.splats.means.device
        lines.append(f"{model.num_gaussians:,} Gaussians · SH {self.settings.sh_degree if self.settings.sh_degree is not None else self.max_sh}"
                     f" · {resolve_backend(self.settings.backend, device)}"
                     + (f" · appearance {self.settings.appearance_group}" if self.settings.appearance_group else ""))
        if self.last_error:
            lines.append(f"⚠ {self.last_error}")
        return "  \n".join(lines)

    def refresh_status(self) -> None:
        if self.closed:
            return
        text = self.status_markdown()
        if text != self._status_text:
            self._status_text = text
            self.status_md.content = text

    def close(self) -> None:
        self.closed = True
        self.paths.close()
        self.loop.stop(join=False)


__all__ = ["ClientSession"]
