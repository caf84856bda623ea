"""Fly-through videos of a trained model: what render.py runs.

    from internal.render_video import VideoOptions, render_video
    result = render_video("outputs/lego", VideoOptions(traj="ellipse", frames=120))

A trajectory comes from the training cameras (cameras.json of the output folder, or `cameras` = a
cameras.json or a scene folder): an ellipse around their focus, a forward-facing spiral, a smooth
interpolation through them, or the cameras themselves (internal/trajectories.py); or from a camera-path
JSON (the one the viewer saves, internal/camera_path.py). Each frame is rendered through
internal.loading.render_view (the one render path of every tool), optionally beside its colour-mapped
depth, and the frames go to an H.264 mp4 (camera_path.write_video) and, if asked, to PNGs.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from . import trajectories as tj
from .camera_path import CameraPath, CameraPose, interpolate, write_video
from .loading import LoadedModel, camera_entry_c2w, intrinsics, load_model, render_view

TRAJECTORIES = ("ellipse", "spiral", "interp", "train")
DEFAULT_FRAMES = 120  # 4 s at 30 fps, as gsplat's generated paths


class RenderVideoError(Exception):
    """A bad option or a model that cannot give the asked trajectory; one line naming it and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class VideoOptions:
    traj: str = "ellipse"
    """ellipse | spiral | interp | train | a camera-path JSON file."""
    output: Optional[str] = None
    """The mp4 to write (default: <output folder>/videos/<traj>_<step>.mp4)."""
    frames: Optional[int] = None
    """Number of frames (default: 120; train: every camera; JSON: fps x seconds or its frames)."""
    fps: Optional[float] = None
    resolution: Optional[str] = None
    """WxH, or W (height from the cameras' aspect). Default: the training cameras' size, or the JSON's."""
    depth: bool = False
    appearance_group: Optional[str] = None
    save_images: bool = False
    cameras: Optional[str] = None
    """cameras.json or a scene folder, when the model has no cameras.json beside it."""
    sh_degree: Optional[int] = None
    backend: str = "auto"
    device: Optional[str] = None
    quality: float = 8.0
    """H.264 quality, 0..10 (imageio's scale)."""


@dataclass
class TrainingCameras:
    c2ws: np.ndarray  # (N,4,4) camera-to-world, OpenCV
    fov_y: np.ndarray  # (N,) radians
    sizes: np.ndarray  # (N,2) width, height
    source: str  # where they came from, for messages


@dataclass
class VideoResult:
    path: Path
    frames: int
    width: int  # of the video (twice the render's with depth)
    height: int
    seconds: float  # wall time of rendering + encoding
    images: Optional[Path]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


# ------------------------------------------------------------------------------------------------
# cameras and trajectories


def training_cameras(model: LoadedModel, cameras: Optional[str]) -> TrainingCameras:
    """The training cameras: from `cameras` (a cameras.json or a scene folder) or the model's cameras.json."""
    if cameras is not None:
        p = Path(cameras)
        if p.is_dir():
            from .data import load_scene

            scene = load_scene(p)  # DatasetError (one line) on a bad scene
            c = scene.cameras
            c2ws = np.tile(np.eye(4), (len(c), 1, 1))
            c2ws[:, :3, :3] = c.R.double().transpose(1, 2).numpy()
            c2ws[:, :3, 3] = c.camera_centers().double().numpy()
            sizes = np.stack([c.width.numpy(), c.height.numpy()], axis=1)
            return TrainingCameras(c2ws, tj.fov_y_of(sizes[:, 1], c.fy.double().numpy()), sizes, str(p))
        from .loading import read_cameras_json

        entries = read_cameras_json(p) if p.is_file() else None
        if not entries:
            raise RenderVideoError(f"{p}: not a cameras.json with usable entries (position, rotation, fx, fy, width, height) nor a scene folder; fix --cameras")
        source = str(p)
    else:
        entries = model.cameras
        source = f"the cameras.json of {model.source}"
        if not entries:
            raise RenderVideoError(
                f"{model.source}: no cameras.json found beside it, so there are no training cameras to build a trajectory from; "
                "pass --cameras CAMERAS.json (or the scene folder), or --traj PATH.json (a camera path saved by the viewer)"
            )
    c2ws = np.stack([camera_entry_c2w(e) for e in entries])
    sizes = np.array([[int(e["width"]), int(e["height"])] for e in entries])
    fy = np.array([float(e["fy"]) for e in entries])
    return TrainingCameras(c2ws, tj.fov_y_of(sizes[:, 1], fy), sizes, source)


def parse_resolution(text: Optional[str], default: tuple[int, int]) -> tuple[int, int]:
    """'WxH' or 'W' (height keeps the default's aspect) -> (width, height)."""
    if text is None:
        return default
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(text))
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise RenderVideoError(f"--resolution {text}: expected WIDTHxHEIGHT (e.g. 800x800) or a width (e.g. 1280)")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else max(1, round(w * default[1] / default[0]))
    if w * h > 8192 * 8192:
        raise RenderVideoError(f"--resolution {text}: {w}x{h} is larger than 8192x8192 pixels; choose a smaller size")
    return w, h


def trajectory(model: LoadedModel, o: VideoOptions) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float, str]:
    """(c2ws (F,4,4), fov_y (F,), default (width, height), default fps, name) of the asked trajectory."""
    if o.frames is not None and o.frames < 1:
        raise RenderVideoError(f"--frames {o.frames}: must be at least 1")
    kind = o.traj
    if kind not in TRAJECTORIES:
        if not kind.lower().endswith(".json") and not Path(kind).is_file():
            raise RenderVideoError(f"--traj {kind}: choose {', '.join(TRAJECTORIES)} or a camera-path .json file")
        path = CameraPath.load(kind)  # CameraPathError (one line) on a bad file
        c2ws, fovs = interpolate(path, None if path.frames else o.frames)
        if path.frames and o.frames is not None and o.frames != len(c2ws):
            c2ws, fovs = tj.train_path(c2ws, fovs, o.frames)
        return c2ws, fovs, (path.width, path.height), path.fps, Path(kind).stem
    cams = training_cameras(model, o.cameras)
    size = tuple(int(v) for v in np.median(cams.sizes, axis=0).round())
    fov = float(np.median(cams.fov_y))
    n = o.frames or DEFAULT_FRAMES
    try:
        if kind == "ellipse":
            c2ws, fovs = tj.ellipse(cams.c2ws, fov, n)
        elif kind == "spiral":
            c2ws, fovs = tj.spiral(cams.c2ws, fov, n, points=model.splats.means.detach().cpu().double().numpy())
        elif kind == "interp":
            if len(cams.c2ws) < 2:
                raise RenderVideoError(f"{cams.source}: --traj interp needs at least 2 cameras, found {len(cams.c2ws)}")
            fps = o.fps or 30.0
            path = CameraPath(keyframes=[CameraPose(c, math.degrees(f)) for c, f in zip(cams.c2ws, cams.fov_y)],
                              fps=fps, seconds=n / fps, width=size[0], height=size[1])
            c2ws, fovs = interpolate(path, n)
        else:
            c2ws, fovs = tj.train_path(cams.c2ws, cams.fov_y, o.frames)
    except ValueError as e:
        raise RenderVideoError(f"{cams.source}: {e}") from None
    return c2ws, fovs, size, 30.0, kind


def default_output(model: LoadedModel, name: str) -> Path:
    """<output folder>/videos/<name>_<step>.mp4 (the folder holding checkpoints/ or point_cloud/), else beside the file."""
    src = model.source
    folder = src.parent
    if src.parent.name == "checkpoints":
        folder = src.parent.parent
    elif src.parent.parent.name == "point_cloud":
        folder = src.parents[2]
    step = f"_{model.step}" if model.step is not None else ""
    return folder / "videos" / f"{name}{step}.mp4"


# ------------------------------------------------------------------------------------------------
# rendering


def render_frames(model: LoadedModel, c2ws: np.ndarray, fovs: np.ndarray, width: int, height: int, o: VideoOptions,
                  on_frame=None) -> Iterator[np.ndarray]:
    """The video's frames, HxWx3 uint8 (HxW2x3 with depth beside), one at a time."""
    near = far = None
    if o.depth:
        near, far = tj.depth_bounds(c2ws, model.splats.means.detach().cpu().double().numpy(), quantiles=(0.02, 0.98))
    for k in range(len(c2ws)):
        K = intrinsics(float(fovs[k]), width, height)
        out = render_view(model, np.linalg.inv(c2ws[k]), K, width, height, sh_degree=o.sh_degree,
                          appearance_group=o.appearance_group, backend=o.backend)
        rgb = (out.colors[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        if o.depth:
            d = tj.colorize_depth(out.depths[0, ..., 0].cpu().double().numpy(), out.alphas[0, ..., 0].cpu().double().numpy(), near, far)
            rgb = np.concatenate([rgb, d], axis=1)
        if on_frame is not None:
            on_frame(k, rgb)
        yield rgb


def render_video(path, o: VideoOptions, out=None) -> VideoResult:
    """Load the model at `path`, render the trajectory `o.traj` and write the mp4 (and PNGs)."""
    from PIL import Image

    from .loading import check_appearance_group
    from .progress import console, progress_bar

    out = out or console()
    device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, device=device)
    try:
        check_appearance_group(model, o.appearance_group)
    except ValueError as e:
        raise RenderVideoError(f"--appearance_group: {e}") from None
    if o.sh_degree is not None and not 0 <= o.sh_degree <= model.splats.sh_degree:
        raise RenderVideoError(f"--sh_degree {o.sh_degree}: {model.source} carries SH degree 0..{model.splats.sh_degree}")
    if o.fps is not None and not o.fps > 0:
        raise RenderVideoError(f"--fps {o.fps}: must be positive")
    c2ws, fovs, size, fps, name = trajectory(model, o)
    width, height = parse_resolution(o.resolution, size)
    fps = o.fps or fps
    video = Path(o.output) if o.output else default_output(model, name)
    if video.suffix.lower() != ".mp4":
        raise RenderVideoError(f"{video}: the video is written as H.264 mp4; give an output path ending in .mp4")
    images = video.with_suffix("") if o.save_images else None
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)

    def save_png(k, rgb):
        if images is not None:
            from .atomic import atomic_write

            atomic_write(images / f"{k:05d}.png", lambda f: Image.fromarray(rgb).save(f, format="PNG"))

    out.print(f"{model.source}: {model.num_gaussians:,} Gaussians{f', step {model.step}' if model.step is not None else ''}; "
              f"{name}: {len(c2ws)} frames at {width}x{height}{' + depth' if o.depth else ''}, {fps:g} fps, on {device}")
    t0 = time.perf_counter()
    with progress_bar("render", len(c2ws), "frame", out) as bar:
        def frames():
            for rgb in render_frames(model, c2ws, fovs, width, height, o, on_frame=save_png):
                yield rgb
                bar.advance()

        write_video(frames(), video, fps=fps, quality=o.quality)
    seconds = time.perf_counter() - t0
    result = VideoResult(video, len(c2ws), width * (2 if o.depth else 1), height, seconds, images)
    out.print(f"wrote {video} ({result.frames} frames, {result.width}x{result.height}, {seconds:.1f} s, {result.fps:.2f} frames/s)"
              + (f"; frames as PNG in {images}" if images else ""))
    return result


__all__ = ["VideoOptions", "VideoResult", "RenderVideoError", "TRAJECTORIES", "render_video", "trajectory",
           "training_cameras", "parse_resolution", "render_frames", "default_output"]
