"""Undistortion on load: SIMPLE_RADIAL / RADIAL / OPENCV photos become pinhole images + valid mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_helpers import Cam, Img, Pt, look_at_qt, write_model
from internal.data import ColmapParams, DataParams, load_scene
from internal.data.images import load_image, undistortion_grid
from internal.data.scene import Distortion

W, H, F, CX, CY = 120, 90, 100.0, 60.0, 45.0


def g(u, v):
    """A smooth colour pattern over normalised image coordinates (what the lens sees)."""
    return np.stack([127.5 + 100 * np.sin(3 * u + 1), 127.5 + 100 * np.cos(4 * v), 127.5 + 120 * (u * v)], -1)


def undistort_points(ud, vd, k):
    """Analytic SIMPLE_RADIAL inverse by Newton on the radius (independent of the code under test)."""
    rd = np.hypot(ud, vd)
    r = rd.copy()
    for _ in range(50):
        r -= (r * (1 + k * r * r) - rd) / (1 + 3 * k * r * r)
    s = np.where(rd > 0, r / np.maximum(rd, 1e-300), 1.0)
    return ud * s, vd * s


def distorted_photo(k):
    y, x = np.mgrid[0:H, 0:W] + 0.5
    u, v = undistort_points((x - CX) / F, (y - CY) / F, k)
    return g(u, v).round().clip(0, 255).astype(np.uint8)


def scene_with(tmp_path, model, params, photo, mask=None):
    q, t = look_at_qt((3.0, 0.0, 0.5))
    write_model(tmp_path / "sparse" / "0", [Cam(1, model, W, H, params)], [Img(1, q, t, 1, "a.png")], [Pt(1, (0, 0, 0), (1, 2, 3), 0.1, [])])
    (tmp_path / "images").mkdir()
    Image.fromarray(photo).save(tmp_path / "images" / "a.png")
    if mask is not None:
        (tmp_path / "masks").mkdir()
        Image.fromarray(mask).save(tmp_path / "masks" / "a.png.png")
    return tmp_path


@pytest.mark.parametrize("k", [-0.2, 0.15])
def test_simple_radial_undistorts_to_the_analytic_pinhole_image(tmp_path, k):
    root = scene_with(tmp_path, "SIMPLE_RADIAL", [F, CX, CY, k], distorted_photo(k))
    s = load_scene(root)
    assert s.distortions[0] is not None and s.distortions[0].model == "SIMPLE_RADIAL"
    assert (float(s.cameras.fx[0]), float(s.cameras.cx[0]), int(s.cameras.width[0])) == (F, CX, W)
    d = load_image(s, 0)
    y, x = np.mgrid[0:H, 0:W] + 0.5
    u, v = (x - CX) / F, (y - CY) / F
    expect = g(u, v)
    # valid = the distorted position of the pixel lies inside the photo (analytic)
    r2 = u * u + v * v
    xs, ys = F * u * (1 + k * r2) + CX, F * v * (1 + k * r2) + CY
    analytic_valid = (xs >= 0) & (xs <= W) & (ys >= 0) & (ys <= H)
    assert d.mask is not None and d.mask.dtype == bool
    inner = analytic_valid.copy()
    inner[[0, -1], :] = inner[:, [0, -1]] = False  # allow a one-pixel rounding band at the border
    assert np.all(d.mask[inner])
    assert not np.any(d.mask & ~analytic_valid)
    if k > 0:
        assert not d.mask[0, 0] and d.mask[H // 2, W // 2]  # pincushion: corners uncovered
    else:
        assert d.mask.all()
    err = np.abs(d.image.astype(float) - expect)[d.mask]
    assert err.mean() < 1.0 and err.max() < 6.0, (err.mean(), err.max())
    # and it really changed something: the distorted photo itself is far from the pinhole image
    assert np.abs(distorted_photo(k).astype(float) - expect)[d.mask].mean() > 3 * err.mean()


def test_grid_matches_pycolmap_projection():
    pycolmap = pytest.importorskip("pycolmap")
    cases = {
        "SIMPLE_RADIAL": ([F, CX, CY, -0.1], Distortion("SIMPLE_RADIAL", F, F, CX, CY, (-0.1, 0, 0, 0, 0, 0, 0, 0))),
        "RADIAL": ([F, CX, CY, -0.1, 0.02], Distortion("RADIAL", F, F, CX, CY, (-0.1, 0.02, 0, 0, 0, 0, 0, 0))),
        "OPENCV": ([F, 98.0, CX + 1, CY - 2, -0.1, 0.02, 0.003, -0.002], Distortion("OPENCV", F, 98.0, CX + 1, CY - 2, (-0.1, 0.02, 0.003, -0.002, 0, 0, 0, 0))),
        "FULL_OPENCV": ([F, 98.0, CX, CY, -0.1, 0.02, 0.003, -0.002, 0.01, 0.05, 0.01, 0.002],
                        Distortion("FULL_OPENCV", F, 98.0, CX, CY, (-0.1, 0.02, 0.003, -0.002, 0.01, 0.05, 0.01, 0.002))),
    }
    y, x = np.mgrid[0:H, 0:W] + 0.5
    for model, (params, dist) in cases.items():
        cam = pycolmap.Camera(model=model, width=W, height=H, params=params)
        grid, valid = undistortion_grid(dist, F, 97.0, CX, CY, W, H)
        u, v = (x - CX) / F, (y - CY) / 97.0
        ref = cam.img_from_cam(np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1))  # COLMAP: pixel centres at +0.5
        got = (grid[0].numpy().reshape(-1, 2).astype(np.float64) + 1) / 2 * [W, H]
        np.testing.assert_allclose(got, ref, atol=2e-3, err_msg=model)
        assert valid.mean() > 0.9


def test_undistortion_warps_the_user_mask_and_combines(tmp_path):
    k = 0.15
    mask = np.full((H, W), 255, np.uint8)
    mask[:, : W // 2] = 0  # left half ignored
    root = tmp_path / "s"
    root.mkdir()
    s = load_scene(scene_with(root, "SIMPLE_RADIAL", [F, CX, CY, k], distorted_photo(k), mask),
                   DataParams(colmap=ColmapParams(mask_dir="masks")))
    d = load_image(s, 0)
    assert not d.mask[:, : W // 2 - 1].any()  # the warped left half stays ignored
    assert d.mask[H // 2, W // 2 + 5 : W - 20].all()
    assert not d.mask[0, -1]  # an uncovered corner of the right half


def test_undistortion_with_down_sampling(tmp_path):
    k = -0.2
    s = load_scene(scene_with(tmp_path, "SIMPLE_RADIAL", [F, CX, CY, k], distorted_photo(k)), DataParams(colmap=ColmapParams(down_sample_factor=2)))
    assert s.distortions[0].fx == F / 2 and s.distortions[0].k[0] == k
    d = load_image(s, 0)
    assert d.image.shape == (H // 2, W // 2, 3)
    y, x = np.mgrid[0 : H // 2, 0 : W // 2] + 0.5
    expect = g((x - CX / 2) / (F / 2), (y - CY / 2) / (F / 2))
    err = np.abs(d.image.astype(float) - expect)[d.mask]
    assert err.mean() < 2.0


def test_opencv_fisheye_is_refused_with_the_fix(tmp_path):
    from internal.data import DatasetError

    root = scene_with(tmp_path, "OPENCV_FISHEYE", [F, F, CX, CY, 0.01, 0, 0, 0], distorted_photo(0.0))
    with pytest.raises(DatasetError, match=r"cameras.bin: camera record 0: camera 1 has model OPENCV_FISHEYE.*image_undistorter"):
        load_scene(root)
