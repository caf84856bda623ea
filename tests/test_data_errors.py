"""Every kind of bad input gives one DatasetError line naming the file (and record/line) and a fix."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from PIL import Image

from data_helpers import make_blender_scene, make_colmap_scene, synthetic_model, write_model
from internal.data import BlenderParams, ColmapParams, DataParams, DatasetError, load_scene
from internal.data.cache import ImageStream
from internal.data.images import load_image


def expect(fn, *fragments: str) -> str:
    """fn() raises a one-line DatasetError containing every fragment; returns the message."""
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert str(f) in msg, f"{f!r} not in: {msg}"
    assert ";" in msg, f"no fix given: {msg}"  # `file: problem; what to do`
    print(msg)
    return msg


def colmap(tmp_path, fmt="bin", **kw):
    make_colmap_scene(tmp_path, fmt=fmt, **kw)
    return tmp_path


P = lambda **kw: DataParams(colmap=ColmapParams(**kw))  # noqa: E731


# ------------------------------------------------------------------------------- folders


def test_missing_path(tmp_path):
    expect(lambda: load_scene(tmp_path / "nope"), str(tmp_path / "nope"), "does not exist", "--data.path")


def test_path_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    expect(lambda: load_scene(tmp_path / "f.txt"), "f.txt", "is a file")


def test_unrecognised_folder(tmp_path):
    expect(lambda: load_scene(tmp_path), str(tmp_path), "neither a COLMAP scene", "transforms_train.json")


def test_model_folder_given_instead_of_scene(tmp_path):
    make_colmap_scene(tmp_path)
    expect(lambda: load_scene(tmp_path / "sparse" / "0"), "is a COLMAP model folder", "scene folder above it")


def test_nerfstudio_transforms_json(tmp_path):
    (tmp_path / "transforms.json").write_text("{}")
    expect(lambda: load_scene(tmp_path), "transforms.json", "not supported")


def test_sparse_without_model(tmp_path):
    (tmp_path / "sparse" / "1").mkdir(parents=True)
    expect(lambda: load_scene(tmp_path), "sparse", "no cameras.bin", "sparse_dir sparse/N")


def test_partial_model(tmp_path):
    colmap(tmp_path)
    (tmp_path / "sparse" / "0" / "points3D.bin").unlink()
    expect(lambda: load_scene(tmp_path), "sparse/0", "but not points3D.bin")


def test_missing_image_dir(tmp_path):
    colmap(tmp_path)
    expect(lambda: load_scene(tmp_path, P(image_dir="imgs")), str(tmp_path / "imgs"), "does not exist", "image_dir")


def test_missing_sparse_dir_param(tmp_path):
    colmap(tmp_path)
    expect(lambda: load_scene(tmp_path, P(sparse_dir="sparse/7")), "sparse/7", "sparse_dir")


# ------------------------------------------------------------------------------- binary models


def test_truncated_binary(tmp_path):
    colmap(tmp_path)
    f = tmp_path / "sparse" / "0" / "images.bin"
    f.write_bytes(f.read_bytes()[:700])
    expect(lambda: load_scene(tmp_path), "images.bin: truncated at byte", "image record 3")
    f.write_bytes(f.read_bytes()[:150])
    expect(lambda: load_scene(tmp_path), "images.bin", "header announces 6 images but only 142 bytes follow")


def test_garbage_binary(tmp_path):
    colmap(tmp_path)
    f = tmp_path / "sparse" / "0" / "cameras.bin"
    f.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    expect(lambda: load_scene(tmp_path), "cameras.bin")


def test_binary_count_larger_than_records(tmp_path):
    colmap(tmp_path)
    f = tmp_path / "sparse" / "0" / "points3D.bin"
    b = bytearray(f.read_bytes())
    b[:8] = struct.pack("<Q", 10**6)
    f.write_bytes(bytes(b))
    expect(lambda: load_scene(tmp_path), "points3D.bin", "header announces 1000000 points")


def test_binary_trailing_bytes(tmp_path):
    colmap(tmp_path)
    f = tmp_path / "sparse" / "0" / "cameras.bin"
    f.write_bytes(f.read_bytes() + b"\0" * 40)
    expect(lambda: load_scene(tmp_path), "cameras.bin", "40 unexpected bytes after the 1 cameras")


def test_unknown_camera_model_id(tmp_path):
    colmap(tmp_path)
    cams, imgs, pts = synthetic_model()
    cams[0].model = 42
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts)
    expect(lambda: load_scene(tmp_path), "cameras.bin", "camera 1 has model id 42 (unknown", "SIMPLE_RADIAL")


def test_unknown_model_name_text(tmp_path):
    colmap(tmp_path, fmt="txt")
    f = tmp_path / "sparse" / "0" / "cameras.txt"
    f.write_text(f.read_text().replace("PINHOLE", "PINHOLEX"))
    expect(lambda: load_scene(tmp_path), "cameras.txt:4", "unknown model 'PINHOLEX'")


def test_image_refers_to_missing_camera(tmp_path):
    colmap(tmp_path)
    cams, imgs, pts = synthetic_model()
    imgs[2].camera_id = 9
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts)
    expect(lambda: load_scene(tmp_path), "images.bin: image record 2", "refers to camera 9")


def test_duplicate_image_name(tmp_path):
    colmap(tmp_path, fmt="txt")
    cams, imgs, pts = synthetic_model()
    imgs[3].name = imgs[1].name
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts, "txt")
    expect(lambda: load_scene(tmp_path), "images.txt:11", "image name 'img_001.png' appears twice", "images.txt:7")


def test_nan_pose_and_non_unit_quaternion(tmp_path):
    colmap(tmp_path, fmt="txt")
    cams, imgs, pts = synthetic_model()
    imgs[0].tvec = (float("nan"), 0.0, 0.0)
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts, "txt")
    expect(lambda: load_scene(tmp_path), "images.txt:5", "pose value is 'nan'")
    imgs[0].tvec = (0.0, 0.0, 1.0)
    imgs[0].qvec = (1.0, 0.5, 0.0, 0.0)
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts, "txt")
    expect(lambda: load_scene(tmp_path), "images.txt:5", "not a rotation")


def test_no_points(tmp_path):
    colmap(tmp_path)
    cams, imgs, _ = synthetic_model()
    write_model(tmp_path / "sparse" / "0", cams, imgs, [])
    expect(lambda: load_scene(tmp_path), "points3D.bin", "no 3D points", "point_triangulator")


def test_no_images(tmp_path):
    colmap(tmp_path)
    cams, _, pts = synthetic_model()
    write_model(tmp_path / "sparse" / "0", cams, [], pts)
    expect(lambda: load_scene(tmp_path), "images.bin", "no registered images")


# ------------------------------------------------------------------------------- text models


def test_garbage_text(tmp_path):
    colmap(tmp_path, fmt="txt")
    (tmp_path / "sparse" / "0" / "images.txt").write_text("hello world\nthis is not colmap\n")
    expect(lambda: load_scene(tmp_path), "images.txt:1", "expected 'IMAGE_ID")


def test_text_count_disagrees_with_header(tmp_path):
    colmap(tmp_path, fmt="txt")
    f = tmp_path / "sparse" / "0" / "points3D.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-1]) + "\n")  # one point lost
    expect(lambda: load_scene(tmp_path), "points3D.txt", "'# Number of points: 40' but the file holds 39")


def test_text_lost_points2d_line(tmp_path):
    colmap(tmp_path, fmt="txt")
    f = tmp_path / "sparse" / "0" / "images.txt"
    lines = f.read_text().splitlines()
    del lines[5]  # the points2D line of the first image: the next pose line is read in its place
    f.write_text("\n".join(lines) + "\n")
    expect(lambda: load_scene(tmp_path), "images.txt:6", "points2D line of image 1", "not (X, Y, POINT3D_ID) triples")


def test_text_bad_number(tmp_path):
    colmap(tmp_path, fmt="txt")
    f = tmp_path / "sparse" / "0" / "cameras.txt"
    f.write_text(f.read_text().replace(" 64 48 ", " 64 4x8 "))
    expect(lambda: load_scene(tmp_path), "cameras.txt:4", "height '4x8' is not an integer")


def test_binary_file_named_txt(tmp_path):
    colmap(tmp_path, fmt="txt")
    (tmp_path / "sparse" / "0" / "cameras.txt").write_bytes(b"# x\n\x00\x01\x02")
    expect(lambda: load_scene(tmp_path), "cameras.txt:2", "NUL bytes")


# ------------------------------------------------------------------------------- images


def test_image_listed_but_absent(tmp_path):
    colmap(tmp_path)
    (tmp_path / "images" / "img_003.png").unlink()
    (tmp_path / "images" / "img_004.png").unlink()
    expect(lambda: load_scene(tmp_path), str(tmp_path / "images" / "img_003.png"), "image 4 listed in", "does not exist", "1 more of the 6")


def test_unreadable_image(tmp_path):
    colmap(tmp_path)
    (tmp_path / "images" / "img_002.png").write_bytes(b"not an image at all")
    expect(lambda: load_scene(tmp_path), "img_002.png", "cannot be read as an image", "replace the file")


def test_truncated_image_fails_on_load(tmp_path):
    colmap(tmp_path, sizes=((256, 192),))
    p = tmp_path / "images" / "img_001.png"
    noise = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(p)
    p.write_bytes(p.read_bytes()[:3000])  # header intact, data cut
    scene = load_scene(tmp_path)  # the header still reads
    expect(lambda: load_image(scene, 1), "img_001.png", "cannot be decoded", "truncated or corrupt")
    # and from the background thread of a capped stream, the same error reaches the consumer
    stream = ImageStream(scene, cap=2)
    expect(lambda: list(stream.iterate(range(6))), "img_001.png", "cannot be decoded")


def test_image_size_disagrees_with_camera(tmp_path):
    colmap(tmp_path)
    Image.new("RGB", (32, 24)).save(tmp_path / "images" / "img_002.png")
    expect(lambda: load_scene(tmp_path), "img_002.png: is 32x24 but camera 1", "64x48", "down_sample_factor N")


def test_images_N_of_wrong_size(tmp_path):
    colmap(tmp_path)
    (tmp_path / "images_2").mkdir()
    for k in range(6):
        Image.new("RGB", (20, 20)).save(tmp_path / "images_2" / f"img_{k:03d}.png")
    expect(lambda: load_scene(tmp_path, P(down_sample_factor=2)), "images_2/img_000.png: is 20x20", "regenerate")


def test_images_N_incomplete(tmp_path):
    colmap(tmp_path)
    (tmp_path / "images_2").mkdir()
    expect(lambda: load_scene(tmp_path, P(down_sample_factor=2)), "images_2/img_000.png", "delete", "resize")


# ------------------------------------------------------------------------------- masks


def test_mask_wrong_size_names_both_files(tmp_path):
    colmap(tmp_path)
    (tmp_path / "masks").mkdir()
    for k in range(6):
        Image.new("L", (64, 48), 255).save(tmp_path / "masks" / f"img_{k:03d}.png")
    Image.new("L", (10, 10), 255).save(tmp_path / "masks" / "img_004.png")
    expect(lambda: load_scene(tmp_path, P(mask_dir="masks")), str(tmp_path / "masks" / "img_004.png"), str(tmp_path / "images" / "img_004.png"), "10x10", "64x48")


def test_mask_missing(tmp_path):
    colmap(tmp_path)
    (tmp_path / "masks").mkdir()
    expect(lambda: load_scene(tmp_path, P(mask_dir="masks")), "img_000.png.png", "does not exist", "img_000.png")


def test_mask_dir_missing(tmp_path):
    colmap(tmp_path)
    expect(lambda: load_scene(tmp_path, P(mask_dir="nomasks")), "nomasks", "mask folder does not exist", "mask_dir")


def test_mask_with_colour_channels(tmp_path):
    colmap(tmp_path, n_images=1)
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "masks" / "img_000.png")
    expect(lambda: load_scene(tmp_path, P(mask_dir="masks")), "img_000.png", "mode RGB", "single channel")


# ------------------------------------------------------------------------------- appearance groups


def test_groups_file_problems(tmp_path):
    colmap(tmp_path, n_images=3)
    expect(lambda: load_scene(tmp_path, P(appearance_groups="g")), "g.json", "does not exist", "generate_image_apperance_groups.py")
    (tmp_path / "g.json").write_text("{oops")
    expect(lambda: load_scene(tmp_path, P(appearance_groups="g")), "g.json", "not valid JSON")
    (tmp_path / "g.json").write_text(json.dumps({"a": ["img_000.png"], "b": ["img_001.png"]}))
    expect(lambda: load_scene(tmp_path, P(appearance_groups="g")), "g.json", "1 of the 3 images are in no group", "img_002.png")
    (tmp_path / "g.json").write_text(json.dumps({"a": ["img_000.png", "img_001.png", "img_002.png"], "b": ["img_001.png"]}))
    expect(lambda: load_scene(tmp_path, P(appearance_groups="g")), "g.json", "'img_001.png' is in group 'a' and in group 'b'")


# ------------------------------------------------------------------------------- Blender


def _edit(root, split, fn):
    f = root / f"transforms_{split}.json"
    data = json.loads(f.read_text())
    fn(data)
    f.write_text(json.dumps(data))
    return f


def test_blender_json_without_frames(tmp_path):
    root = make_blender_scene(tmp_path)
    _edit(root, "val", lambda d: d.pop("frames"))
    expect(lambda: load_scene(root), "transforms_val.json", "has no 'frames'")


def test_blender_invalid_json(tmp_path):
    root = make_blender_scene(tmp_path)
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.7,\n "frames": [,]}')
    expect(lambda: load_scene(root), "transforms_train.json:2", "invalid JSON")


def test_blender_nan_pose(tmp_path):
    root = make_blender_scene(tmp_path)
    f = _edit(root, "train", lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")))
    expect(lambda: load_scene(root), str(f), "frame 2 ('./train/r_2')", "non-finite")


def test_blender_non_rigid_pose(tmp_path):
    root = make_blender_scene(tmp_path)

    def scale(d):
        m = np.asarray(d["frames"][1]["transform_matrix"])
        m[:3, :3] *= 1.2
        d["frames"][1]["transform_matrix"] = m.tolist()

    f = _edit(root, "test", scale)
    expect(lambda: load_scene(root), str(f), "frame 1", "not a rigid transform")


def test_blender_missing_image(tmp_path):
    root = make_blender_scene(tmp_path)
    (root / "train" / "r_1.png").unlink()
    expect(lambda: load_scene(root), str(root / "train" / "r_1.png"), "frame 1 in", "does not exist")


def test_blender_without_focal(tmp_path):
    root = make_blender_scene(tmp_path)
    _edit(root, "train", lambda d: d.pop("camera_angle_x"))
    expect(lambda: load_scene(root), "transforms_train.json", "neither 'camera_angle_x' nor 'fl_x'")


def test_blender_bad_matrix_shape(tmp_path):
    root = make_blender_scene(tmp_path)
    _edit(root, "train", lambda d: d["frames"][0].__setitem__("transform_matrix", [[1, 0], [0, 1]]))
    expect(lambda: load_scene(root), "transforms_train.json", "frame 0", "4x4")


def test_blender_mask_wrong_size(tmp_path):
    root = make_blender_scene(tmp_path, n=(1, 0, 0))
    (root / "masks" / "train").mkdir(parents=True)
    Image.new("L", (7, 7)).save(root / "masks" / "train" / "r_0.png")
    expect(lambda: load_scene(root, DataParams(blender=BlenderParams(mask_dir="masks"))), "masks/train/r_0.png", "train/r_0.png is 40x30")


def test_blender_w_h_disagree_with_image(tmp_path):
    root = make_blender_scene(tmp_path, n=(1, 0, 0), extra={"w": 80, "h": 60})
    expect(lambda: load_scene(root), "r_0.png: is 40x30", "w=80, h=60")
