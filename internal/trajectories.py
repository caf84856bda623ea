"""Camera trajectories for fly-through videos, made from a scene's training cameras (pure numpy).

    c2ws = training camera-to-world matrices (N,4,4), OpenCV axes (x right, y down, z forward)
    path, fovs = ellipse(c2ws, fov_y, 120)                      # orbit at the cameras' mean height
    path, fovs = spiral(c2ws, fov_y, 120, points=means)         # forward-facing scenes (LLFF-style)
    path, fovs = train_path(c2ws, fovs_of_each_camera, 30)      # the cameras themselves, in order

Every generator returns ((F,4,4) camera-to-world, (F,) vertical field of view in radians), the same
pair `internal.camera_path.interpolate` returns for a camera-path JSON, so render.py treats them alike.

The world has no known up direction (COLMAP's is arbitrary): it is estimated from the cameras, which
people hold upright, as the mean of their "up" axes (-y in OpenCV). What they look at (the scene's
focus) is the point nearest, in the least-squares sense, to all their optical axes.
"""

from __future__ import annotations

import math

import numpy as np


def _as_c2ws(c2ws) -> np.ndarray:
    c2ws = np.asarray(c2ws, dtype=np.float64)
    if c2ws.ndim != 3 or c2ws.shape[1:] != (4, 4) or len(c2ws) == 0:
        raise ValueError(f"camera-to-world matrices must be (N,4,4) with N >= 1, got {c2ws.shape}")
    return c2ws


def estimate_up(c2ws: np.ndarray) -> np.ndarray:
    """Unit world-up: the mean of the cameras' up axes (-y, OpenCV), +z when they cancel out."""
    ups = -_as_c2ws(c2ws)[:, :3, 1]
    mean = ups.mean(axis=0)
    n = np.linalg.norm(mean)
    return mean / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])


def focus_point(c2ws: np.ndarray) -> np.ndarray:
    """The point nearest to every camera's optical axis (least squares): what the cameras look at.

    Minimises sum_i |(I - d_i d_i^T)(p - o_i)|^2 over p, with o_i the centre and d_i the viewing direction
    of camera i. When the axes are (nearly) parallel, as in forward-facing captures, the system is
    ill-conditioned; the minimum-norm solution relative to the mean centre is returned.
    """
    c2ws = _as_c2ws(c2ws)
    o = c2ws[:, :3, 3]
    d = c2ws[:, :3, 2] / np.linalg.norm(c2ws[:, :3, 2], axis=1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    A = P.sum(0)
    mean = o.mean(0)
    b = np.einsum("nij,nj->i", P, o - mean)
    return mean + np.linalg.lstsq(A, b, rcond=1e-6)[0]


def look_at(eye, target, up) -> np.ndarray:
    """(4,4) camera-to-world at `eye` looking at `target`, image up along `up` (OpenCV axes)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z = z / max(np.linalg.norm(z), 1e-12)
    x = np.cross(z, up)  # right = forward x up (OpenCV: x right, y down, z forward; x = y x z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x = x / np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, np.cross(z, x), z, eye
    return c2w


def fov_y_of(height, fy) -> np.ndarray:
    """Vertical field of view (radians) of cameras with image height `height` and focal length `fy` (pixels)."""
    return 2.0 * np.arctan(0.5 * np.asarray(height, dtype=np.float64) / np.asarray(fy, dtype=np.float64))


def depth_bounds(c2ws: np.ndarray, points: np.ndarray, quantiles=(0.05, 0.95), max_points: int = 50_000) -> tuple[float, float]:
    """(near, far): quantiles of the depths of `points` in front of the cameras (a sample of both)."""
    c2ws = _as_c2ws(c2ws)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rng = np.random.default_rng(0)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    if len(c2ws) > 50:
        c2ws = c2ws[np.linspace(0, len(c2ws) - 1, 50).round().astype(int)]
    z = np.einsum("ci,pci->pc", c2ws[:, :3, 2], points[:, None, :] - c2ws[None, :, :3, 3])  # depth along each axis
    z = z[z > 1e-6]
    if z.size == 0:
        raise ValueError("no point lies in front of the cameras: cannot tell how deep the scene is")
    near, far = np.quantile(z, quantiles)
    return float(near), float(max(far, near * 1.01))


def ellipse(c2ws, fov_y: float, num_frames: int, *, center=None, up=None, height=None) -> tuple[np.ndarray, np.ndarray]:
    """An orbit around the scene's focus, looking at it, at the cameras' mean height.

    The ellipse lies in the plane perpendicular to `up` (default: estimated); its axes follow the spread
    of the camera centres in that plane (principal directions, 90th percentile of the distances along
    each), so an orbit capture gives its ring and a wide/narrow capture an ellipse. It starts at the
    azimuth of the first camera and closes on itself (the frame after the last is the first).
    """
    c2ws = _as_c2ws(c2ws)
    up = estimate_up(c2ws) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    center = focus_point(c2ws) if center is None else np.asarray(center, np.float64)
    rel = c2ws[:, :3, 3] - center
    h = float(np.mean(rel @ up)) if height is None else float(height)
    flat = rel - np.outer(rel @ up, up)
    # principal in-plane directions of the camera centres
    seed = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b1 = np.cross(up, seed)
    b1 /= np.linalg.norm(b1)
    b2 = np.cross(up, b1)
    xy = np.stack([flat @ b1, flat @ b2], axis=1)
    _, vecs = np.linalg.eigh(xy.T @ xy + 1e-12 * np.eye(2))
    e1 = vecs[0, 1] * b1 + vecs[1, 1] * b2  # largest spread first
    e2 = np.cross(up, e1)
    a = float(np.quantile(np.abs(flat @ e1), 0.9))
    b = float(np.quantile(np.abs(flat @ e2), 0.9))
    if a <= 1e-9 and b <= 1e-9:
        raise ValueError("the cameras all sit on the scene's vertical axis: there is no orbit to follow; use --traj spiral or interp")
    a, b = max(a, 1e-3 * max(a, b)), max(b, 1e-3 * max(a, b))
    phase = math.atan2(float(flat[0] @ e2) / b, float(flat[0] @ e1) / a)
    t = phase + np.linspace(0.0, 2.0 * math.pi, int(num_frames), endpoint=False)
    out = np.empty((len(t), 4, 4))
    for k, tk in enumerate(t):
        eye = center + a * math.cos(tk) * e1 + b * math.sin(tk) * e2 + h * up
        out[k] = look_at(eye, center, up)
    return out, np.full(len(t), float(fov_y))


def spiral(c2ws, fov_y: float, num_frames: int, *, points, rotations: float = 2.0, z_rate: float = 0.5,
           radius_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A forward-facing spiral (LLFF's render path): around the mean camera, looking at a point at the
    scene's focal depth in front of it.

    Radii are the 90th percentiles of the camera centres' offsets along the mean camera's axes; the
    focal depth weights the near and far depth bounds of `points` (the Gaussians) as LLFF does,
    1 / ((1 - 0.75) / near + 0.75 / far).
    """
    c2ws = _as_c2ws(c2ws)
    up = estimate_up(c2ws)
    centre = c2ws[:, :3, 3].mean(0)
    forward = c2ws[:, :3, 2].mean(0)
    forward /= np.linalg.norm(forward)
    mean_c2w = look_at(centre, centre + forward, up)
    near, far = depth_bounds(c2ws, points)
    focal = 1.0 / ((1.0 - 0.75) / near + 0.75 / far)
    offsets = (c2ws[:, :3, 3] - centre) @ mean_c2w[:3, :3]  # in the mean camera's axes
    radii = np.quantile(np.abs(offsets), 0.9, axis=0) * radius_scale
    if not np.any(radii > 1e-9):
        radii = np.full(3, 0.05 * focal)  # one camera (or all at one place): a small spiral of its own
    target = centre + focal * forward
    t = np.linspace(0.0, 2.0 * math.pi * rotations, int(num_frames), endpoint=False)
    out = np.empty((len(t), 4, 4))
    for k, tk in enumerate(t):
        local = np.array([math.cos(tk) * radii[0], -math.sin(tk) * radii[1], -math.sin(tk * z_rate) * radii[2]])
        eye = centre + mean_c2w[:3, :3] @ local
        out[k] = look_at(eye, target, up)
    return out, np.full(len(t), float(fov_y))


def train_path(c2ws, fovs, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training cameras themselves, in order; `num_frames` picks that many, evenly spread."""
    c2ws = _as_c2ws(c2ws)
    fovs = np.broadcast_to(np.asarray(fovs, np.float64), (len(c2ws),))
    idx = np.arange(len(c2ws)) if num_frames is None else np.linspace(0, len(c2ws) - 1, int(num_frames)).round().astype(int)
    return c2ws[idx].copy(), fovs[idx].copy()


# ------------------------------------------------------------------------------------------------
# depth images


# Control points of the depth colours (near -> far): pale yellow, orange, red, purple, dark blue.
_DEPTH_COLOURS = np.array([[255, 246, 190], [253, 176, 75], [232, 62, 38], [120, 14, 112], [18, 10, 48]], dtype=np.float64)


def colorize_depth(depth: np.ndarray, alpha: np.ndarray, near: float, far: float) -> np.ndarray:
    """HxW expected depth -> HxWx3 uint8: near bright, far dark, on black where nothing was drawn.

    The scale is linear in inverse depth between `near` and `far` (fixed for a whole video, so colours
    do not flicker), which spends the colours where a viewer sees detail.
    """
    depth = np.asarray(depth, np.float64)
    alpha = np.clip(np.asarray(alpha, np.float64), 0.0, 1.0)
    inv = 1.0 / np.maximum(depth, 1e-9)
    t = (1.0 / near - inv) / (1.0 / near - 1.0 / far)
    t = np.clip(np.nan_to_num(t, nan=1.0), 0.0, 1.0) * (len(_DEPTH_COLOURS) - 1)
    i = np.minimum(t.astype(int), len(_DEPTH_COLOURS) - 2)
    f = (t - i)[..., None]
    rgb = (1 - f) * _DEPTH_COLOURS[i] + f * _DEPTH_COLOURS[i + 1]
    return (rgb * alpha[..., None] + 0.5).astype(np.uint8)


__all__ = ["estimate_up", "focus_point", "look_at", "fov_y_of", "depth_bounds", "ellipse", "spiral", "train_path", "colorize_depth"]
