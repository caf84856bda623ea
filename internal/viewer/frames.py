"""One viewer frame: a camera pose and the display settings -> an RGB uint8 image, through render_view.

Nothing here knows about viser: the render loop (loop.py), the app (app.py) and the benchmark share it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..loading import LoadedModel, intrinsics, render_view

RENDER_MODES = ("rgb", "depth", "alpha")


@dataclass(frozen=True)
class CameraState:
    """What a client's camera shows: camera-to-world (4,4) OpenCV axes, vertical fov (rad), canvas size."""

    c2w: np.ndarray
    fov_y: float
    width: int
    height: int

    @staticmethod
    def from_wxyz(wxyz, position, fov_y: float, width: int, height: int) -> "CameraState":
        from ..camera_path import quat_to_rotmat

        c2w = np.eye(4)
        c2w[:3, :3] = quat_to_rotmat(np.asarray(wxyz, dtype=np.float64))
        c2w[:3, 3] = np.asarray(position, dtype=np.float64)
        return CameraState(c2w, float(fov_y), int(width), int(height))

    def same_view(self, other: "CameraState | None") -> bool:
        return (other is not None and self.width == other.width and self.height == other.height
                and self.fov_y == other.fov_y and np.array_equal(self.c2w, other.c2w))


@dataclass(frozen=True)
class DisplaySettings:
    """Everything besides the camera that decides a frame (one per client)."""

    mode: str = "rgb"
    sh_degree: int | None = None
    scaling_modifier: float = 1.0
    background: tuple[float, float, float] | None = None  # None: the training background
    near: float = 0.01
    far: float = 1e10
    max_depth: float = 0.0  # depth mode: the far end of the colour map; 0 = automatic (98th percentile)
    max_resolution: int = 1920  # long side of a still frame
    appearance_group: str | None = None
    backend: str = "auto"

    def with_(self, **changes) -> "DisplaySettings":
        return replace(self, **changes)


def frame_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the aspect ratio of width x height and its long side at most `long_side` (>= 1 px)."""
    width, height = max(1, int(width)), max(1, int(height))
    s = min(1.0, long_side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


# A perceptually ordered colour map for depth (near = dark blue ... far = dark red), as anchor colours
# interpolated linearly into a 256-entry table.
_DEPTH_ANCHORS = np.array([
    [0.19, 0.07, 0.23], [0.27, 0.42, 0.89], [0.11, 0.81, 0.84], [0.39, 0.99, 0.42],
    [0.88, 0.86, 0.22], [0.98, 0.51, 0.13], [0.80, 0.17, 0.03], [0.48, 0.02, 0.01],
])
_DEPTH_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_DEPTH_ANCHORS)), _DEPTH_ANCHORS[:, c])
                       for c in range(3)], axis=1).astype(np.float32)


def colorize_depth(depth: torch.Tensor, alpha: torch.Tensor, max_depth: float, background: torch.Tensor) -> torch.Tensor:
    """(H,W,1) expected depth and alpha -> (H,W,3) colours in [0,1] on `background` where nothing was drawn.

    max_depth <= 0 picks the 98th percentile of the covered pixels' depth, so a few far floaters do not
    flatten the map.
    """
    covered = alpha[..., 0] > 0.5
    if max_depth <= 0:
        values = depth[..., 0][covered]
        if values.numel() == 0:
            max_depth = 1.0
        else:
            if values.numel() > 100_000:
                values = values[torch.randint(values.numel(), (100_000,), generator=torch.Generator().manual_seed(0)).to(values.device)]
            max_depth = float(torch.quantile(values.float(), 0.98)) or 1.0
    lut = torch.from_numpy(_DEPTH_LUT).to(depth.device)
    idx = (depth[..., 0] / max_depth).clamp(0, 1).mul(255).round().long()
    return lut[idx] * alpha + background.to(depth.dtype) * (1 - alpha)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(H,W,3) float in [0,1] -> contiguous uint8 numpy array (one new float buffer, then in place: fresh
    full-frame buffers cost page faults on every frame)."""
    x = img.mul(255.0)
    return x.add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def render_frame(model: LoadedModel, camera: CameraState, settings: DisplaySettings, width: int, height: int,
                 fraction: float = 1.0) -> np.ndarray:
    """The (height, width, 3) uint8 image of `model` seen from `camera`, in the settings' render mode;
    fraction < 1 draws only that share of the Gaussians (the first ones: a moving frame's level of detail)."""
    if settings.mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {settings.mode!r}; choose one of {', '.join(RENDER_MODES)}")
    K = intrinsics(camera.fov_y, width, height)
    w2c = np.linalg.inv(camera.c2w)
    bg = model.background if settings.background is None else settings.background
    out = render_view(model, w2c, K, width, height, sh_degree=settings.sh_degree, background=bg,
                      appearance_group=settings.appearance_group, scaling_modifier=settings.scaling_modifier,
                      near=settings.near, far=settings.far, backend=settings.backend,
                      max_gaussians=None if fraction >= 1.0 else max(1, int(model.num_gaussians * fraction)))
    bg_t = torch.as_tensor(bg, dtype=out.colors.dtype, device=out.colors.device)
    if settings.mode == "rgb":
        img = out.colors[0]
    elif settings.mode == "depth":
        img = colorize_depth(out.depths[0], out.alphas[0], settings.max_depth, bg_t)
    else:
        img = out.alphas[0].expand(-1, -1, 3)
    return to_uint8(img)


def encode_image(img: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """JPEG/PNG bytes of an (H,W,3) uint8 image (Pillow), for screenshots and the benchmark."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


class MovingQuality:
    """Chooses how much work a frame rendered while the camera moves gets, from measured frame times.

    One number, the effort e in (0, 1] (1 = the still frame), is nudged after each moving frame by
    sqrt(target / measured) (half a step in log space, so one slow frame does not collapse it). Effort
    is spent on pixels first: the frame is the still frame scaled by sqrt(e) per side, down to
    `lod_long_side`; below that the long side stays there and only the first `fraction` of the Gaussians
    (most visible first, see loading.sort_by_visibility) are drawn, down to `min_fraction`; below that
    the long side shrinks again to `min_long_side`. A still frame's time seeds e before any moving frame
    has been measured. Whatever the cost model of a renderer, the feedback settles near the target.
    """

    def __init__(self, target_seconds: float = 1.0 / 12.0, min_long_side: int = 96, lod_long_side: int = 320,
                 min_fraction: float = 0.1, initial_effort: float = 0.25):
        self.target = float(target_seconds)
        self.min_long_side = int(min_long_side)
        self.lod_long_side = int(lod_long_side)
        self.min_fraction = float(min_fraction)
        self.effort = float(initial_effort)
        self.measured_moving = False

    def plan(self, width: int, height: int) -> tuple[int, int, float]:
        """(w, h, fraction of the Gaussians) of a moving frame whose still frame is width x height."""
        long_side = max(width, height)
        s_lod = min(1.0, self.lod_long_side / long_side)
        s_min = min(1.0, self.min_long_side / long_side)
        e = self.effort
        if e >= s_lod * s_lod:
            scale, fraction = math.sqrt(e), 1.0
        elif e >= s_lod * s_lod * self.min_fraction:
            scale, fraction = s_lod, e / (s_lod * s_lod)
        else:
            scale, fraction = max(s_min, math.sqrt(e / self.min_fraction)), self.min_fraction
        w, h = frame_size(width, height, max(1, round(long_side * min(1.0, scale))))
        return w, h, min(1.0, fraction)

    def size(self, width: int, height: int) -> tuple[int, int]:
        return self.plan(width, height)[:2]

    def observe(self, seconds: float, moving: bool, pixels: int = 0, still_pixels: int = 0) -> None:
        if seconds <= 0:
            return
        if moving:
            self.effort *= math.sqrt(self.target / seconds)
            self.measured_moving = True
        elif not self.measured_moving:
            self.effort = self.target / seconds
        self.effort = min(1.0, max(1e-4, self.effort))


__all__ = ["CameraState", "DisplaySettings", "RENDER_MODES", "render_frame", "colorize_depth", "frame_size",
           "encode_image", "to_uint8", "MovingQuality"]
