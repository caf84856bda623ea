"""Novel views for a guidance loss: cameras the photos do not cover, around the scene centre.

Every view looks at the scene centre from a point at some direction and distance from it; the modes
differ in how that point is drawn:

  - "interpolate": between two random training cameras: the direction from the centre slerped, the
    distance interpolated, at a uniform fraction (views stay within the span of the capture);
  - "perturb": a random training camera's position turned about the centre by up to `jitter_deg`
    in azimuth and in elevation, its distance scaled by `radius_range`;
  - "orbit": anywhere on a sphere around the centre: azimuth uniform over 360 degrees, elevation
    uniform in `elevation_range` (degrees above the plane through the centre normal to the scene's up),
    distance `radius` x `radius_range`, as DreamFusion-style text-to-3D samples cameras.

The scene's frame is estimated from the training cameras: up = the mean of their up vectors (-y of
OpenCV cameras), the centre = the point nearest to all their optical axes in the least-squares sense
(where the cameras look; a forward-facing capture, whose axes are nearly parallel, uses the mean camera
position moved along the mean viewing direction by the median depth of the scene points instead), the
radius = the median distance of the cameras from the centre. `center` and `radius` override them.
Views are square, `render_size` pixels, with the training cameras' median vertical field of view
(`fov_deg` overrides it), in OpenCV axes with the scene's up pointing up in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from ..data.cameras import Cameras


@dataclass
class NovelViews:
    """How novel views are drawn (see internal/guidance/views.py)."""

    mode: Literal["interpolate", "perturb", "orbit"] = "interpolate"
    render_size: Optional[int] = None
    """side of the square render in pixels (None: the guidance's input resolution)."""
    fov_deg: Optional[float] = None
    """vertical field of view (None: the training cameras' median)."""
    center: Optional[tuple[float, float, float]] = None
    """the point views look at (None: estimated from the training cameras)."""
    radius: Optional[float] = None
    """orbit distance from the centre (None: the training cameras' median distance)."""
    radius_range: tuple[float, float] = (1.0, 1.0)
    """distance multipliers, drawn uniformly (perturb and orbit)."""
    elevation_range: tuple[float, float] = (-10.0, 80.0)
    """orbit: elevation in degrees above the plane normal to the scene's up."""
    jitter_deg: float = 20.0
    """perturb: the largest azimuth and elevation change, degrees."""


@dataclass
class SceneFrame:
    center: np.ndarray  # (3,)
    up: np.ndarray  # (3,) unit
    radius: float
    positions: np.ndarray  # (N,3) training camera centres
    fov_y: float  # radians


def scene_frame(cameras: Cameras, points: Optional[np.ndarray] = None, center=None, radius=None) -> SceneFrame:
    """Centre, up, radius and field of view of the training cameras (module docstring)."""
    R = cameras.R.double().numpy()
    pos = cameras.camera_centers().double().numpy()
    forward = R[:, 2, :]  # camera +z in world coordinates
    up = -R[:, 1, :].mean(0)
    up = up / max(np.linalg.norm(up), 1e-12)
    if center is None:
        proj = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]  # onto the plane normal to each axis
        A, b = proj.sum(0), np.einsum("nij,nj->i", proj, pos)
        if np.linalg.eigvalsh(A / len(pos))[0] > 0.05:  # axes spread over > ~13 degrees: a focus point exists
            c = np.linalg.solve(A, b)
        else:
            look = forward.mean(0)
            look /= max(np.linalg.norm(look), 1e-12)
            depth = 1.0
            if points is not None and len(points):
                d = (np.asarray(points, np.float64)[None] - pos[:, None]) @ look  # (N,P) depth along the mean view
                d = d[d > 0]
                depth = float(np.median(d)) if d.size else depth
            c = pos.mean(0) + depth * look
    else:
        c = np.asarray(center, dtype=np.float64).reshape(3)
    dist = np.linalg.norm(pos - c, axis=1)
    r = float(np.median(dist)) if radius is None else float(radius)
    fov_y = float(np.median(2.0 * np.arctan(0.5 * cameras.height.double().numpy() / cameras.fy.double().numpy())))
    return SceneFrame(center=c, up=up, radius=max(r, 1e-6), positions=pos, fov_y=fov_y)


def look_at(positions: np.ndarray, center: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera R (N,3,3), T (N,3) of OpenCV cameras at `positions` looking at `center`, with
    the image's up along `up` (x = forward x up, y = forward x x points down)."""
    f = center[None] - positions
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    x = np.cross(f, up[None])
    bad = np.linalg.norm(x, axis=1) < 1e-6  # looking straight along up: any horizontal x will do
    if bad.any():
        alt = np.cross(f[bad], np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
        x[bad] = alt
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(f, x)
    R = np.stack([x, y, f], axis=1)
    T = -np.einsum("nij,nj->ni", R, positions)
    return R, T


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = a - up * (a @ up)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).numpy()


def _slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    dot = np.clip((a * b).sum(1), -1.0, 1.0)
    omega = np.arccos(dot)[:, None]
    so = np.sin(omega)
    small = so[:, 0] < 1e-6
    out = np.where(small[:, None], a + t[:, None] * (b - a),
                   (np.sin((1 - t[:, None]) * omega) * a + np.sin(t[:, None] * omega) * b) / np.where(small[:, None], 1.0, so))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def sample_views(opts: NovelViews, frame: SceneFrame, n: int, size: int, g: torch.Generator) -> Cameras:
    """`n` novel cameras (size x size pixels) drawn with the CPU generator `g` (module docstring)."""
    c, up = frame.center, frame.up
    rel = frame.positions - c[None]
    dist = np.linalg.norm(rel, axis=1)
    dirs = rel / np.maximum(dist, 1e-12)[:, None]
    m = len(dirs)
    if opts.mode == "interpolate":
        i = torch.randint(0, m, (n,), generator=g).numpy()
        j = torch.randint(0, m, (n,), generator=g).numpy()
        t = _uniform(g, n, 0.0, 1.0)
        d = _slerp(dirs[i], dirs[j], t)
        r = (1 - t) * dist[i] + t * dist[j]
    elif opts.mode == "perturb":
        i = torch.randint(0, m, (n,), generator=g).numpy()
        daz = np.radians(_uniform(g, n, -opts.jitter_deg, opts.jitter_deg))
        del_ = np.radians(_uniform(g, n, -opts.jitter_deg, opts.jitter_deg))
        e1, e2 = _basis(up)
        base = dirs[i]
        el = np.arcsin(np.clip(base @ up, -1.0, 1.0)) + del_
        el = np.clip(el, -math.radians(89.0), math.radians(89.0))
        az = np.arctan2(base @ e2, base @ e1) + daz
        d = np.cos(el)[:, None] * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2) + np.sin(el)[:, None] * up
        r = dist[i] * _uniform(g, n, *opts.radius_range)
    elif opts.mode == "orbit":
        e1, e2 = _basis(up)
        az = _uniform(g, n, 0.0, 2 * math.pi)
        el = np.radians(_uniform(g, n, *opts.elevation_range))
        d = np.cos(el)[:, None] * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2) + np.sin(el)[:, None] * up
        r = frame.radius * _uniform(g, n, *opts.radius_range)
    else:
        raise ValueError(f"unknown novel-view mode {opts.mode!r}; choose interpolate, perturb or orbit")
    positions = c[None] + d * r[:, None]
    R, T = look_at(positions, c, up)
    fov = math.radians(opts.fov_deg) if opts.fov_deg else frame.fov_y
    f = 0.5 * size / math.tan(0.5 * fov)
    return Cameras.from_numpy(R, T, np.full(n, f), np.full(n, f), np.full(n, size / 2), np.full(n, size / 2),
                              np.full(n, size), np.full(n, size))


__all__ = ["NovelViews", "SceneFrame", "scene_frame", "look_at", "sample_views"]
