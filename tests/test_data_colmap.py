"""COLMAP scenes: the real statue (bin and txt), synthetic models, down-sampling, splits, groups."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import STATUE, copy_statue, make_colmap_scene, shared, synthetic_model, write_model
from internal.data import ColmapParams, DataParams, DatasetError, load_scene
from internal.data.colmap_model import read_model
from internal.data.images import load_image

CAMERA_FIELDS = ("R", "T", "fx", "fy", "cx", "cy", "width", "height", "appearance_id")


def params(**colmap) -> DataParams:
    return DataParams(colmap=ColmapParams(**colmap))


def _parse_txt_independently(sparse_txt):
    """cameras {id: (w, h, params)} and images {name: (qvec, tvec, cam_id)} from the text files."""
    cams = {}
    for line in (sparse_txt / "cameras.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            t = line.split()
            cams[int(t[0])] = (t[1], int(t[2]), int(t[3]), [float(v) for v in t[4:]])
    imgs = {}
    lines = [l for l in (sparse_txt / "images.txt").read_text().splitlines() if not l.startswith("#")]
    for line in lines[0::2]:
        t = line.split()
        imgs[t[9]] = (np.array([float(v) for v in t[1:5]]), np.array([float(v) for v in t[5:8]]), int(t[8]))
    return cams, imgs


def test_statue_bin_and_txt_identical():
    root = shared(STATUE)
    a = load_scene(root)
    b = load_scene(root, params(sparse_dir="sparse_txt/0"))
    assert a.kind == b.kind == "colmap"
    assert not a.random_points and not b.random_points  # a reconstruction's points
    assert a.image_names == b.image_names and len(a) == 23
    for f in CAMERA_FIELDS:
        assert torch.equal(getattr(a.cameras, f), getattr(b.cameras, f)), f
    np.testing.assert_array_equal(a.points_xyz, b.points_xyz)
    np.testing.assert_array_equal(a.points_rgb, b.points_rgb)
    assert a.extent == b.extent


def test_statue_cameras_against_independent_values():
    from scipy.spatial.transform import Rotation

    root = shared(STATUE)
    scene = load_scene(root)
    cams, imgs = _parse_txt_independently(root / "sparse_txt" / "0")
    assert scene.image_names == sorted(imgs)
    centers = scene.cameras.camera_centers().double().numpy()
    for k, name in enumerate(scene.image_names):
        q, t, cid = imgs[name]
        R = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        np.testing.assert_allclose(centers[k], -R.T @ t, atol=1e-5)
        np.testing.assert_allclose(scene.cameras.R[k].double().numpy(), R, atol=1e-6)
        model, w, h, p = cams[cid]
        assert model == "PINHOLE"
        assert (int(scene.cameras.width[k]), int(scene.cameras.height[k])) == (w, h)
        np.testing.assert_allclose([float(scene.cameras.fx[k]), float(scene.cameras.fy[k]), float(scene.cameras.cx[k]), float(scene.cameras.cy[k])], p, rtol=1e-6)
        assert Image.open(scene.image_paths[k]).size == (w, h)
    # mixed heights in one scene (656..662)
    assert len(set(scene.cameras.height.tolist())) > 1
    # extent: 3DGS nerf_normalization over the train cameras
    tr = centers[scene.train_ids]
    assert scene.extent == pytest.approx(1.1 * np.linalg.norm(tr - tr.mean(0), axis=1).max(), rel=1e-6)


def test_statue_against_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    root = shared(STATUE)
    scene = load_scene(root)
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    by_name = {im.name: im for im in rec.images.values()}
    for k, name in enumerate(scene.image_names):
        np.testing.assert_allclose(scene.cameras.camera_centers()[k].double().numpy(), by_name[name].projection_center(), atol=1e-5)
    assert len(scene.points_xyz) == rec.num_points3D()


def test_statue_splits_and_groups():
    root = shared(STATUE)
    s = load_scene(root)
    assert s.val_ids == s.test_ids == [0, 8, 16]
    assert sorted(s.train_ids + s.val_ids) == list(range(23))
    r = load_scene(root, params(split_mode="reconstruction", eval_step=4))
    assert r.train_ids == list(range(23)) and r.val_ids == [0, 4, 8, 12, 16, 20]
    # one appearance group per COLMAP camera by default (23 cameras here)
    assert len(s.appearance_group_names) == 23
    assert sorted(s.cameras.appearance_id.tolist()) == list(range(23))


def test_statue_images_load_at_their_own_sizes():
    s = load_scene(shared(STATUE))
    for i in (0, 3, 5):
        d = load_image(s, i)
        assert d.image.shape == (int(s.cameras.height[i]), int(s.cameras.width[i]), 3) and d.image.dtype == np.uint8
        assert d.alpha is None and d.mask is None
        np.testing.assert_array_equal(d.image, np.asarray(Image.open(s.image_paths[i]).convert("RGB")))


def test_statue_down_sample_on_load(tmp_path):
    root = copy_statue(tmp_path / "statue")
    full = load_scene(root)
    half = load_scene(root, params(down_sample_factor=2))
    assert torch.equal(half.cameras.width, full.cameras.width // 2)
    assert torch.equal(half.cameras.height, full.cameras.height // 2)
    torch.testing.assert_close(half.cameras.fx, full.cameras.fx / 2)
    torch.testing.assert_close(half.cameras.cy, full.cameras.cy / 2)
    k = int(np.argmax(full.cameras.height.numpy() % 2))  # an odd height: the last row is dropped
    d = load_image(half, k)
    src = np.asarray(Image.open(full.image_paths[k]).convert("RGB"), dtype=np.float64)
    h, w = d.image.shape[:2]
    box = src[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
    assert np.abs(d.image - box).max() <= 1.0


def test_statue_reads_images_N_and_scales_intrinsics_per_axis(tmp_path):
    root = copy_statue(tmp_path / "statue")
    (root / "images_2").mkdir()
    full = load_scene(root)
    for p in full.image_paths:  # what a resize tool writes: the whole image, rounded size
        im = Image.open(p)
        im.resize((round(im.width / 2), round(im.height / 2)), Image.BILINEAR).save(root / "images_2" / p.split("/")[-1], quality=95)
    s = load_scene(root, params(down_sample_factor=2))
    assert all("/images_2/" in p for p in s.image_paths)
    for k in range(len(s)):
        w, h = Image.open(s.image_paths[k]).size
        assert (int(s.cameras.width[k]), int(s.cameras.height[k])) == (w, h)
        assert float(s.cameras.cy[k]) == pytest.approx(float(full.cameras.cy[k]) * h / int(full.cameras.height[k]), rel=1e-6)
        assert float(s.cameras.fx[k]) == pytest.approx(float(full.cameras.fx[k]) * w / 1000, rel=1e-6)
    assert load_image(s, 1).image.shape[:2] == (int(s.cameras.height[1]), int(s.cameras.width[1]))


def test_statue_sparse_without_0_and_text_auto(tmp_path):
    src = shared(STATUE)
    root = tmp_path / "s"
    shutil.copytree(src / "sparse_txt" / "0", root / "sparse")  # sparse/*.txt, no 0/ (as undistort_images writes)
    (root / "images").symlink_to(src / "images")
    s = load_scene(root)
    assert len(s) == 23 and s.kind == "colmap"


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_synthetic_model_roundtrip(tmp_path, fmt):
    cams, imgs, pts = make_colmap_scene(tmp_path, fmt=fmt, n_images=5, models=("PINHOLE", "SIMPLE_PINHOLE"), sizes=((64, 48), (32, 24)))
    m = read_model(tmp_path / "sparse" / "0")
    assert sorted(m.cameras) == [1, 2] and m.cameras[2].model == "SIMPLE_PINHOLE"
    assert [im.name for im in m.images] == [im.name for im in imgs]
    assert [im.num_points2d for im in m.images] == [len(im.points2d) for im in imgs]
    np.testing.assert_allclose(m.points_xyz, [p.xyz for p in pts])
    np.testing.assert_array_equal(m.points_rgb, [p.rgb for p in pts])
    s = load_scene(tmp_path)
    assert s.cameras.width.tolist() == [64, 32, 64, 32, 64]
    assert float(s.cameras.fx[1]) == float(s.cameras.fy[1]) == pytest.approx(1.2 * 32)


def test_helper_writer_matches_pycolmap(tmp_path):
    """The test writer is an oracle for the reader only if COLMAP itself reads what it writes."""
    pycolmap = pytest.importorskip("pycolmap")
    cams, imgs, pts = synthetic_model(4, ("PINHOLE", "OPENCV"), ((64, 48), (64, 48)))
    for im in imgs:
        im.points2d = []
    for p in pts:
        p.track = []
    for fmt in ("bin", "txt"):
        write_model(tmp_path / fmt, cams, imgs, pts, fmt)
        rec = pycolmap.Reconstruction(str(tmp_path / fmt))
        assert rec.num_cameras() == 2 and rec.num_images() == 4 and rec.num_points3D() == len(pts)
        assert rec.cameras[2].model.name == "OPENCV"
        np.testing.assert_allclose(rec.images[3].cam_from_world().translation, imgs[2].tvec, atol=1e-12)


def test_appearance_groups_json(tmp_path):
    make_colmap_scene(tmp_path, n_images=4)
    (tmp_path / "by_hand.json").write_text(json.dumps({"day": ["img_000.png", "img_002.png"], "night": ["img_001.png", "img_003.png"]}))
    s = load_scene(tmp_path, params(appearance_groups="by_hand"))
    assert s.appearance_group_names == ["day", "night"]
    assert s.cameras.appearance_id.tolist() == [0, 1, 0, 1]


def test_split_single_image_and_eval_step(tmp_path):
    make_colmap_scene(tmp_path, n_images=10)
    s = load_scene(tmp_path, params(eval_step=3))
    assert s.test_ids == [0, 3, 6, 9] and s.train_ids == [1, 2, 4, 5, 7, 8]


def test_colmap_rgba_photo_is_rgb(tmp_path):
    make_colmap_scene(tmp_path, n_images=2)
    p = tmp_path / "images" / "img_000.png"
    rgb = np.asarray(Image.open(p))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(p)
    d = load_image(load_scene(tmp_path), 0)
    assert d.alpha is None
    np.testing.assert_array_equal(d.image, rgb)


def test_down_sample_factor_must_be_positive(tmp_path):
    make_colmap_scene(tmp_path, n_images=2)
    with pytest.raises(DatasetError, match="down_sample_factor"):
        load_scene(tmp_path, params(down_sample_factor=0))
