"""Blender / NeRF-synthetic scenes: real lego at 400 px and 800 px, and synthetic folders."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image

from data_helpers import LEGO_400, LEGO_800, make_blender_scene, shared
from internal.data import BlenderParams, DataParams, load_scene
from internal.data.images import load_image


def bparams(**kw) -> DataParams:
    return DataParams(blender=BlenderParams(**kw))


def _project(scene, i, X):
    """Pixel of world point X in camera i, and its depth."""
    c = scene.cameras
    x = c.R[i].double().numpy() @ np.asarray(X, float) + c.T[i].double().numpy()
    return np.array([c.fx[i] * x[0] / x[2] + c.cx[i], c.fy[i] * x[1] / x[2] + c.cy[i]]), x[2]


def test_lego_400_all_splits():
    root = shared(LEGO_400)
    s = load_scene(root)
    assert s.kind == "blender"
    assert s.random_points  # 3DGS fills a cube with random points
    assert (len(s.train_ids), len(s.val_ids), len(s.test_ids)) == (100, 25, 50)
    assert s.image_names[s.val_ids[1]] == "val/r_4.png"
    f = 0.5 * 400 / math.tan(0.5 * 0.6911112070083618)
    torch.testing.assert_close(s.cameras.fx, torch.full((175,), f, dtype=torch.float32))
    assert s.cameras.cx[0] == 200 and s.cameras.width.unique().tolist() == [400]
    assert s.points_xyz.shape == (100_000, 3) and s.points_xyz.dtype == np.float32
    assert s.points_xyz.min() >= -1.3 and s.points_xyz.max() <= 1.3
    assert s.points_rgb.dtype == np.uint8
    assert s.background == (1.0, 1.0, 1.0)
    # OpenGL -> OpenCV: every camera looks at the object at the origin (in front of it, near the centre)
    for i in range(0, 175, 7):
        uv, depth = _project(s, i, (0, 0, 0))
        assert depth > 3 and np.all(np.abs(uv - 200) < 40), (i, uv, depth)
    # the frame's own camera-to-world translation is the camera centre
    frame = json.loads((root / "transforms_train.json").read_text())["frames"][0]
    np.testing.assert_allclose(s.cameras.camera_centers()[0].numpy(), np.asarray(frame["transform_matrix"])[:3, 3], atol=1e-5)
    # world up (Blender +z) points up in the image (OpenCV y grows downwards) for cameras above the object
    uv0, _ = _project(s, 0, (0, 0, 0))
    uv1, _ = _project(s, 0, (0, 0, 0.5))
    assert uv1[1] < uv0[1]


def test_lego_400_composited_on_background():
    root = shared(LEGO_400)
    for white in (True, False):
        s = load_scene(root, bparams(white_background=white))
        d = load_image(s, 0)
        rgba = np.asarray(Image.open(s.image_paths[0]))
        assert d.image.shape == (400, 400, 3) and d.alpha.shape == (400, 400)
        np.testing.assert_array_equal(d.alpha, rgba[..., 3])
        clear = rgba[..., 3] == 0
        assert clear.mean() > 0.5
        assert np.all(d.image[clear] == (255 if white else 0))
        opaque = rgba[..., 3] == 255
        np.testing.assert_array_equal(d.image[opaque], rgba[..., :3][opaque])
        a = rgba[..., 3:4].astype(float) / 255
        expect = rgba[..., :3] * a + (255.0 if white else 0.0) * (1 - a)
        assert np.abs(d.image - expect).max() <= 1.0


def test_lego_800_train_only_and_matches_400():
    s8 = load_scene(shared(LEGO_800))
    s4 = load_scene(shared(LEGO_400))
    assert (len(s8.train_ids), s8.val_ids, s8.test_ids) == (25, [], [])
    assert s8.cameras.width[0] == 800
    half = load_scene(shared(LEGO_800), bparams(down_sample_factor=2))
    # train r_0 is the first frame of both; at factor 2 the 800 px camera is the 400 px camera
    for f in ("fx", "fy", "cx", "cy", "width", "height", "R", "T"):
        torch.testing.assert_close(getattr(half.cameras, f)[0], getattr(s4.cameras, f)[0])
    a, b = load_image(half, 0), load_image(s4, 0)
    assert a.image.shape == b.image.shape == (400, 400, 3)
    # the README: r_0 at 400 px is within 1/255 of a 2x2 box average of the original (RGBA)
    assert np.abs(a.alpha.astype(int) - b.alpha.astype(int)).max() <= 1
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 1.0


def test_missing_val_uses_test_and_vice_versa(tmp_path):
    s = load_scene(make_blender_scene(tmp_path / "a", n=(3, 0, 2)))
    assert s.val_ids == s.test_ids == [3, 4]
    s = load_scene(make_blender_scene(tmp_path / "b", n=(3, 2, 0)))
    assert s.val_ids == s.test_ids == [3, 4]


def test_explicit_intrinsics_and_per_frame_override(tmp_path):
    root = make_blender_scene(tmp_path, n=(2, 0, 0), size=(40, 30), extra={"fl_x": 50.0, "fl_y": 52.0, "cx": 19.0, "cy": 14.5, "w": 40, "h": 30})
    data = json.loads((root / "transforms_train.json").read_text())
    data["frames"][1]["fl_x"] = 60.0
    (root / "transforms_train.json").write_text(json.dumps(data))
    s = load_scene(root)
    assert s.cameras.fx.tolist() == [50.0, 60.0] and s.cameras.fy.tolist() == [52.0, 52.0]
    assert s.cameras.cx.tolist() == [19.0, 19.0] and s.cameras.cy.tolist() == [14.5, 14.5]
    s2 = load_scene(root, bparams(down_sample_factor=2))
    assert s2.cameras.fx.tolist() == [25.0, 30.0] and s2.cameras.width.tolist() == [20, 20] and s2.cameras.cy.tolist() == [7.25, 7.25]
    assert load_image(s2, 0).image.shape == (15, 20, 3)


def test_synthetic_cameras_look_at_origin(tmp_path):
    s = load_scene(make_blender_scene(tmp_path))
    for i in range(len(s)):
        uv, depth = _project(s, i, (0, 0, 0))
        np.testing.assert_allclose(uv, [20, 15], atol=1e-3)
        assert depth > 0


def test_rgb_blender_images_have_no_alpha(tmp_path):
    s = load_scene(make_blender_scene(tmp_path, n=(2, 0, 0), rgba=False))
    d = load_image(s, 0)
    assert d.alpha is None and d.image.shape == (30, 40, 3)


def test_random_points_count_and_seed(tmp_path):
    root = make_blender_scene(tmp_path, n=(2, 0, 0))
    a = load_scene(root, bparams(random_points=500))
    b = load_scene(root, bparams(random_points=500))
    assert a.points_xyz.shape == (500, 3)
    np.testing.assert_array_equal(a.points_xyz, b.points_xyz)
