"""The render loop of one client: a thread that always renders the newest camera pose.

    loop = RenderLoop(render=..., send=..., full_size=...)
    loop.start(); loop.update_camera(state); ...; loop.stop()

- A camera update replaces any pose not yet rendered (stale poses are never rendered) and asks for a
  *moving* frame: smaller (and, when even a small frame is too slow, drawing only the most visible
  Gaussians), planned by MovingQuality so the frame rate holds, lower JPEG quality.
- After `still_delay` seconds without an update the same pose is rendered once more as a *still* frame
  at full resolution.
- `invalidate()` (a display setting changed) and a new model version (live training) re-render.
- A frame in progress cannot be interrupted (the rasterizer is one native call), but it is never
  followed by the pose it was started with if a newer one arrived meanwhile.
- Exceptions while rendering or sending are reported through `on_error` and the loop carries on; a
  send that fails because the client is gone ends the loop. Renders of all clients share one lock,
  since one render already uses every core.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .frames import CameraState, MovingQuality, frame_size

# One render at a time across clients: the rasterizer parallelises each frame over every core, and
# several concurrent renders would only oversubscribe them.
RENDER_LOCK = threading.Lock()


class ClientGone(Exception):
    """Raised by a send function when its client has disconnected: the loop ends quietly."""


@dataclass
class FrameStats:
    width: int = 0
    height: int = 0
    render_ms: float = 0.0  # rendering (rasterize + colour mapping)
    send_ms: float = 0.0  # encoding + queueing to the client
    moving: bool = False
    frames: int = 0
    fps: float = 0.0  # moving frames per second, measured over the last moving frames
    moving_at: float = 0.0  # time.monotonic() of the last moving frame
    fraction: float = 1.0  # share of the Gaussians drawn


class RenderLoop:
    def __init__(
        self,
        render: Callable[[CameraState, int, int, float], np.ndarray],
        send: Callable[[np.ndarray, bool, CameraState], None],
        full_size: Callable[[CameraState], tuple[int, int]],
        *,
        still_delay: float = 0.2,
        model_version: Callable[[], int] | None = None,
        refresh_seconds: Callable[[], float] | None = None,
        on_frame: Callable[[FrameStats], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        quality: MovingQuality | None = None,
        threads: int | str | None = "auto",
        name: str = "render-loop",
    ):
        self._render = render
        self._send = send
        self._full_size = full_size
        self.still_delay = float(still_delay)
        self._model_version = model_version or (lambda: 0)
        self._refresh_seconds = refresh_seconds or (lambda: 1.0)
        self._on_frame = on_frame
        self._on_error = on_error
        self.quality = quality or MovingQuality()
        # torch/OpenMP threads of this render thread (thread-local): a number, None (torch's default: every
        # core) or "auto" (see render_threads()).
        self.threads = threads
        self.stats = FrameStats()
        self._cond = threading.Condition()
        self._camera: CameraState | None = None
        self._request = 0  # bumped by every camera update / invalidate
        self._moved_at = 0.0
        self._paused = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._moving_times: list[float] = []
        # Render-thread state: what the last frame showed.
        self._rendered_request = -1
        self._rendered_version = None
        self._still_done = False
        self._last_frame_at = 0.0

    # ------------------------------------------------------------ called from other threads
    def start(self) -> "RenderLoop":
        self._thread.start()
        return self

    def update_camera(self, camera: CameraState) -> None:
        with self._cond:
            self._camera = camera
            self._request += 1
            self._moved_at = time.monotonic()
            self._cond.notify_all()

    def invalidate(self, moving: bool = False) -> None:
        """Render the current pose again (moving=True: as a moving frame first, e.g. while a slider drags)."""
        with self._cond:
            self._request += 1
            self._moved_at = time.monotonic() if moving else self._moved_at - self.still_delay
            self._cond.notify_all()

    def set_paused(self, paused: bool) -> None:
        """Paused: nothing is rendered (browser mode draws the splats itself)."""
        with self._cond:
            self._paused = paused
            if not paused:
                self._request += 1
            self._cond.notify_all()

    def stop(self, join: bool = True) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if join and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def camera(self) -> CameraState | None:
        return self._camera

    # ------------------------------------------------------------ the thread
    def _next_job(self):
        """Block until there is something to render; returns (camera, moving, request, version) or None to stop."""
        rendered_request = self._rendered_request
        with self._cond:
            while True:
                if self._stopped:
                    return None
                now = time.monotonic()
                camera = self._camera
                if camera is not None and not self._paused:
                    version = self._model_version()
                    if self._request != rendered_request:
                        return camera, now - self._moved_at < self.still_delay, self._request, version
                    # Still means no update for still_delay since the last frame ended, too: a frame slower
                    # than still_delay must not be followed at once by a full-size one while the camera moves.
                    quiet = now - max(self._moved_at, self._last_frame_at)
                    if not self._still_done and quiet >= self.still_delay:
                        return camera, False, self._request, version
                    if version != self._rendered_version and now - self._last_frame_at >= self._refresh_seconds():
                        return camera, False, self._request, version
                    # Sleep until the still frame is due, or poll the model version now and then.
                    wait = self.still_delay - quiet if not self._still_done else 0.1
                    self._cond.wait(timeout=max(0.005, min(wait, 0.25)))
                else:
                    self._cond.wait(timeout=0.25)

    def _run(self) -> None:
        import torch

        self._torch = torch
        self._default_threads = torch.get_num_threads()
        while True:
            job = self._next_job()
            if job is None:
                return
            camera, moving, request, version = job
            try:
                self._frame(camera, moving)
            except ClientGone:
                with self._cond:
                    self._stopped = True
                return
            except Exception as exc:  # a bad setting or a transient failure must not end the loop
                if self._on_error is not None:
                    self._on_error(exc)
                time.sleep(0.05)
            self._rendered_request = request
            self._rendered_version = version
            self._still_done = not moving
            self._last_frame_at = time.monotonic()

    def _frame(self, camera: CameraState, moving: bool) -> None:
        n = render_threads(self.threads, self._default_threads)
        if n != self._torch.get_num_threads():
            self._torch.set_num_threads(n)  # this thread only: other threads (training) keep their count
        full_w, full_h = self._full_size(camera)
        w, h, fraction = self.quality.plan(full_w, full_h) if moving else (full_w, full_h, 1.0)
        t0 = time.perf_counter()
        with RENDER_LOCK:
            img = self._render(camera, w, h, fraction)
        t1 = time.perf_counter()
        self._send(img, moving, camera)
        t2 = time.perf_counter()
        self.quality.observe(t2 - t0, moving, w * h, full_w * full_h)
        s = self.stats
        s.width, s.height, s.render_ms, s.send_ms, s.moving = w, h, 1e3 * (t1 - t0), 1e3 * (t2 - t1), moving
        s.fraction = fraction
        s.frames += 1
        if moving:
            s.moving_at = time.monotonic()
            self._moving_times.append(t2)
            self._moving_times = [t for t in self._moving_times if t2 - t < 2.0]
            if len(self._moving_times) >= 2:
                s.fps = (len(self._moving_times) - 1) / (self._moving_times[-1] - self._moving_times[0])
        if self._on_frame is not None:
            self._on_frame(s)


def render_threads(setting, default: int) -> int:
    """Threads for the next render. "auto": every core, but one while the machine's 1-minute load is above
    1.5x its cores: OpenMP's barriers stall when its threads wait for cores other jobs hold (on the shared
    2-core machine at load ~13, one thread drew a 1280x720 frame in 254 ms, two in 942 ms)."""
    if setting is None:
        return default
    if setting == "auto":
        try:
            busy = os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1)
        except OSError:
            busy = False
        return 1 if busy else default
    return max(1, int(setting))


def full_frame_size(max_resolution: Callable[[], int]) -> Callable[[CameraState], tuple[int, int]]:
    """The still-frame size of a client: its canvas, the long side capped at the max-resolution control."""
    return lambda camera: frame_size(camera.width, camera.height, int(max_resolution()))


__all__ = ["RenderLoop", "FrameStats", "ClientGone", "RENDER_LOCK", "full_frame_size", "render_threads"]
