"""Trajectory generators (internal/trajectories.py) on synthetic camera rigs with known answers.

The world is turned by a random rotation and shifted, so nothing can rely on +z being up."""

import math

import numpy as np
import pytest

from internal.trajectories import (
    colorize_depth, depth_bounds, ellipse, estimate_up, focus_point, fov_y_of, look_at, spiral, train_path,
)

W, H = 160, 120


def K_of(fov_y):
    f = 0.5 * H / math.tan(0.5 * fov_y)
    return np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])


def project(c2w, K, p):
    x = np.linalg.inv(c2w) @ np.append(p, 1.0)
    assert x[2] > 0, "point behind the camera"
    u = K @ (x[:3] / x[2])
    return u[:2]


def random_rotation(seed):
    q = np.random.default_rng(seed).normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@pytest.fixture
def world():
    R = random_rotation(3)
    t = np.array([0.7, -2.0, 5.0])
    return R, t, R @ np.array([0, 0, 1.0])  # rotation, shift, the world's up in the turned frame


def ring(world, n=24, radius=4.0, height=1.5, target_height=0.0, jitter=0.0, seed=0):
    """Cameras on a circle of `radius` at `height`, looking at (0,0,target_height), upright (+z up)."""
    R, t, up = world
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n + 0.3
        eye = np.array([radius * math.cos(a), radius * math.sin(a), height]) + jitter * rng.normal(size=3)
        c2w = look_at(R @ eye + t, R @ np.array([0, 0, target_height]) + t, up)
        out.append(c2w)
    return np.stack(out)


def test_look_at_is_upright_opencv():
    c2w = look_at([0, 0, 0], [1, 0, 0], [0, 0, 1])
    assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3)) and np.isclose(np.linalg.det(c2w[:3, :3]), 1)
    K = K_of(1.0)
    assert np.allclose(project(c2w, K, [1, 0, 0]), [W / 2, H / 2])
    assert project(c2w, K, [1, 0, 0.1])[1] < H / 2  # above the target: higher in the image (y down)
    assert project(c2w, K, [1, -0.1, 0])[0] > W / 2  # to the right (looking along +x with +z up, -y is right)


def test_focus_point_and_up_of_a_ring(world):
    R, t, up = world
    c2ws = ring(world, jitter=0.0)
    assert np.allclose(focus_point(c2ws), t, atol=1e-9)
    assert np.allclose(estimate_up(c2ws), up, atol=0.25)  # cameras tilted down see a tilted 'up'
    level = ring(world, height=0.0)
    assert np.allclose(estimate_up(level), up, atol=1e-9)


def test_ellipse_orbits_the_focus_at_the_cameras_height_and_looks_at_it(world):
    R, t, up = world
    c2ws = ring(world, n=30, radius=4.0, height=1.5, target_height=0.0, jitter=0.05)
    fov = 0.8
    path, fovs = ellipse(c2ws, fov, 90)
    assert path.shape == (90, 4, 4) and np.allclose(fovs, fov)
    centre = focus_point(c2ws)
    K = K_of(fov)
    heights, radii = [], []
    for c2w in path:
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.allclose(project(c2w, K, centre), [W / 2, H / 2], atol=1e-6)  # the scene's centre at the image centre
        assert project(c2w, K, centre + 0.3 * up)[1] < H / 2  # upright
        rel = c2w[:3, 3] - centre
        heights.append(rel @ up)
        radii.append(np.linalg.norm(rel - (rel @ up) * up))
    assert np.allclose(heights, 1.5, atol=0.05)  # the cameras' mean height above the focus
    assert np.allclose(radii, 4.0, rtol=0.05)
    # starts at the first camera's azimuth and goes round once (consecutive steps equal, no seam)
    first = c2ws[0, :3, 3] - centre
    start = path[0, :3, 3] - centre
    flat = lambda v: (v - (v @ up) * up) / np.linalg.norm(v - (v @ up) * up)
    assert flat(first) @ flat(start) > 0.99
    steps = np.linalg.norm(np.diff(np.concatenate([path[:, :3, 3], path[:1, :3, 3]]), axis=0), axis=1)
    assert steps.std() < 0.05 * steps.mean()


def test_ellipse_follows_an_elongated_capture(world):
    R, t, up = world
    c2ws = []
    for k in range(40):
        a = 2 * math.pi * k / 40
        eye = np.array([6 * math.cos(a), 2 * math.sin(a), 1.0])
        c2ws.append(look_at(R @ eye + t, t, up))
    path, _ = ellipse(np.stack(c2ws), 0.8, 64)
    rel = path[:, :3, 3] - t
    along = np.abs(rel @ (R @ np.array([1.0, 0, 0]))).max()
    across = np.abs(rel @ (R @ np.array([0, 1.0, 0]))).max()
    assert 5.0 < along < 6.5 and 1.6 < across < 2.3


def test_spiral_of_a_forward_facing_capture(world):
    R, t, up = world
    forward_world = R @ np.array([0, 1.0, 0])  # cameras look along +y of the unturned world, +z up
    c2ws = []
    for x in np.linspace(-1, 1, 5):
        for z in np.linspace(-0.5, 0.5, 3):
            eye = R @ np.array([x, 0, z]) + t
            c2ws.append(look_at(eye, eye + forward_world, up))
    c2ws = np.stack(c2ws)
    # a wall of points 10 units ahead, some 4 units ahead
    rng = np.random.default_rng(0)
    pts = np.concatenate([np.c_[rng.uniform(-5, 5, 500), np.full(500, 10.0), rng.uniform(-3, 3, 500)],
                          np.c_[rng.uniform(-2, 2, 100), np.full(100, 4.0), rng.uniform(-1, 1, 100)]])
    pts_w = pts @ R.T + t
    near, far = depth_bounds(c2ws, pts_w)
    assert 3.9 < near < 4.5 and 9.5 < far <= 10.01
    path, fovs = spiral(c2ws, 0.9, 60, points=pts_w)
    assert path.shape == (60, 4, 4)
    focal = 1.0 / (0.25 / near + 0.75 / far)
    target = t + focal * forward_world
    K = K_of(0.9)
    for c2w in path:
        assert c2w[:3, 2] @ forward_world > 0.95  # still facing the scene
        assert np.allclose(project(c2w, K, target), [W / 2, H / 2], atol=1e-6)
        assert project(c2w, K, target + up)[1] < H / 2
    offsets = (path[:, :3, 3] - t) @ R  # back in the unturned frame
    assert np.abs(offsets[:, 0]).max() <= 1.0 + 1e-9 and np.abs(offsets[:, 2]).max() <= 0.5 + 1e-9
    assert np.abs(offsets[:, 0]).max() > 0.8  # it does move


def test_train_path_and_fov():
    c2ws = np.stack([np.eye(4)] * 10)
    c2ws[:, 0, 3] = np.arange(10)
    p, f = train_path(c2ws, fov_y_of(np.full(10, 100), np.full(10, 50.0)), 4)
    assert np.allclose(p[:, 0, 3], [0, 3, 6, 9]) and np.allclose(f, 2 * math.atan(1.0))
    p, _ = train_path(c2ws, 0.5)
    assert len(p) == 10
    with pytest.raises(ValueError, match=r"\(N,4,4\)"):
        train_path(np.zeros((0, 4, 4)), 0.5)


def test_colorize_depth_near_bright_far_dark_background_black():
    d = np.linspace(1.0, 10.0, 50)[None].repeat(2, 0)
    a = np.ones_like(d)
    a[1] = 0.0
    img = colorize_depth(d, a, 1.0, 10.0)
    assert img.shape == (2, 50, 3) and img.dtype == np.uint8
    lum = img[0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lum) < 0.5) and lum[0] > 200 and lum[-1] < 40  # monotone: near bright, far dark
    assert np.all(img[1] == 0)
