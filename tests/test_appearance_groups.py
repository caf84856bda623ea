"""generate_image_apperance_groups.py and group files: every mode on the shared COLMAP scene (bin and
txt), EXIF grouping, Blender scenes, and the one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from data_helpers import STATUE, copy_statue, make_blender_scene, shared
from internal.data import BlenderParams, ColmapParams, DataParams, DatasetError, load_scene
from internal.data.groups import exif_exposure_key, make_groups, write_groups

REPO = Path(__file__).resolve().parents[1]
STATUE_NAMES = [f"DSC_{n}.jpg" for n in range(5283, 5306)]


def run_tool(*args, capsys=None):
    """The script in this process (its main()); returns (exit status, stdout, stderr)."""
    import generate_image_apperance_groups as tool

    capsys.readouterr()
    try:
        rc = tool.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_script_fails_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "generate_image_apperance_groups.py", str(tmp_path), "--camera"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {tmp_path}: neither a COLMAP scene") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("sparse", ["sparse/0", "sparse_txt/0"])
def test_every_mode_on_the_statue(tmp_path, sparse):
    root = copy_statue(tmp_path / "statue", sparse_from=sparse)
    by_camera = make_groups(root, "camera")
    # 23 PINHOLE cameras, one per image: 23 groups camera_1..camera_23 in camera-id order.
    assert list(by_camera) == [f"camera_{i}" for i in range(1, 24)]
    assert sorted(n for v in by_camera.values() for n in v) == STATUE_NAMES
    assert all(len(v) == 1 for v in by_camera.values())
    by_image = make_groups(root, "image")
    assert by_image == {n: [n] for n in STATUE_NAMES}
    assert make_groups(root, "dirname") == {".": STATUE_NAMES}  # all at the top of images/
    # The loader reads each file back: the camera file reproduces the default grouping exactly.
    write_groups(root / "cams.json", by_camera)
    default, from_file = load_scene(root), load_scene(root, DataParams(colmap=ColmapParams(appearance_groups="cams")))
    assert from_file.appearance_group_names == default.appearance_group_names
    assert from_file.cameras.appearance_id.tolist() == default.cameras.appearance_id.tolist()


def test_the_tool_writes_the_file_and_refuses_to_overwrite(tmp_path, capsys):
    root = copy_statue(tmp_path / "statue")
    rc, out, err = run_tool(root, "--camera", capsys=capsys)
    assert rc == 0, err
    f = root / "appearance_groups.json"
    assert "23 groups over 23 images" in out and json.loads(f.read_text()) == make_groups(root, "camera")
    rc, out, err = run_tool(root, "--image", capsys=capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == f"error: {f}: already exists; pass --overwrite to replace it, or choose another --name"
    assert json.loads(f.read_text()) == make_groups(root, "camera")  # untouched
    rc, out, err = run_tool(root, "--image", "--overwrite", capsys=capsys)
    assert rc == 0 and len(json.loads(f.read_text())) == 23
    rc, out, err = run_tool(root, "--dirname", "--name", "by_folder", capsys=capsys)
    assert rc == 0 and json.loads((root / "by_folder.json").read_text()) == {".": STATUE_NAMES}
    scene = load_scene(root, DataParams(colmap=ColmapParams(appearance_groups="by_folder")))
    assert scene.appearance_group_names == ["."] and set(scene.cameras.appearance_id.tolist()) == {0}
    rc, out, err = run_tool(root, capsys=capsys)  # no mode
    assert rc == 2 and "one of the arguments --camera --image --dirname --exif is required" in err


def test_sub_folders_group_by_dirname(tmp_path):
    from data_helpers import Cam, Img, Pt, write_model

    cams = [Cam(1, "PINHOLE", 8, 6, [8.0, 8.0, 4.0, 3.0])]
    names = ["day1/a.png", "day1/b.png", "day2/a.png", "top.png"]
    imgs = [Img(i + 1, (1, 0, 0, 0), (0, 0, 4.0), 1, n) for i, n in enumerate(names)]
    write_model(tmp_path / "sparse" / "0", cams, imgs, [Pt(1, (0, 0, 0), (1, 2, 3), 0.5, [])], "txt")
    assert make_groups(tmp_path, "dirname") == {".": ["top.png"], "day1": ["day1/a.png", "day1/b.png"], "day2": ["day2/a.png"]}


def _with_exif(src: Path, dst: Path, exposure, iso, fnumber, wb) -> None:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x829A] = TiffImagePlugin.IFDRational(*exposure)
    sub[0x8827] = iso
    sub[0x829D] = TiffImagePlugin.IFDRational(*fnumber)
    sub[0xA403] = wb
    with Image.open(src) as im:
        im.save(dst, exif=exif, quality=95)


def test_exif_groups_by_exposure_settings(tmp_path):
    src = shared(STATUE)
    root = tmp_path / "statue"
    shutil.copytree(src / "sparse" / "0", root / "sparse" / "0")
    (root / "images").mkdir()
    for k, name in enumerate(STATUE_NAMES):
        if k < 8:  # 8 photos at 1/250 s, ISO 100, f/2.8, auto white balance
            _with_exif(src / "images" / name, root / "images" / name, (1, 250), 100, (28, 10), 0)
        elif k < 12:  # 4 at 1/60 s, ISO 400, f/4, manual white balance
            _with_exif(src / "images" / name, root / "images" / name, (1, 60), 400, (4, 1), 1)
        else:  # the rest have no EXIF (as the shared photos)
            os.symlink(src / "images" / name, root / "images" / name)
    assert exif_exposure_key(root / "images" / STATUE_NAMES[0]) == "exposure_1/250_iso_100_f_2.8_wb_auto"
    groups = make_groups(root, "exif")
    assert groups == {
        "exposure_1/250_iso_100_f_2.8_wb_auto": STATUE_NAMES[:8],
        "exposure_1/60_iso_400_f_4_wb_manual": STATUE_NAMES[8:12],
        "no_exif": STATUE_NAMES[12:],
    }
    # --exif reads the photos: one missing is an error naming it.
    (root / "images" / STATUE_NAMES[5]).unlink()
    with pytest.raises(DatasetError, match=f"{STATUE_NAMES[5]}: image listed in the model does not exist"):
        make_groups(root, "exif")


def test_errors_without_a_model_or_images(tmp_path, capsys):
    (tmp_path / "sparse").mkdir()
    rc, out, err = run_tool(tmp_path, "--camera", capsys=capsys)
    assert rc == 1 and "no cameras.bin or cameras.txt" in err
    from data_helpers import Cam, write_model

    write_model(tmp_path / "sparse" / "0", [Cam(1, "PINHOLE", 8, 6, [8.0, 8.0, 4.0, 3.0])], [], [], "bin")
    rc, out, err = run_tool(tmp_path, "--camera", capsys=capsys)
    assert rc == 1 and "the model has no registered images, so there is nothing to group" in err


def test_unregistered_photos_are_reported(tmp_path, capsys):
    root = copy_statue(tmp_path / "statue")
    os.unlink(root / "images")
    shutil.copytree(shared(STATUE) / "images", root / "images")
    shutil.copyfile(root / "images" / STATUE_NAMES[0], root / "images" / "extra.jpg")
    rc, out, err = run_tool(root, "--camera", capsys=capsys)
    assert rc == 0 and "note: 1 image files in images/ are not in the model and get no group (first: extra.jpg)" in out


def test_blender_scenes_take_groups_too(tmp_path, capsys):
    root = make_blender_scene(tmp_path / "bl", n=(4, 2, 2))
    names = load_scene(root).image_names
    assert load_scene(root).appearance_group_names == ["default"]
    rc, out, err = run_tool(root, "--image", "--name", "per_image", capsys=capsys)
    assert rc == 0, err
    scene = load_scene(root, DataParams(blender=BlenderParams(appearance_groups="per_image")))
    assert scene.appearance_group_names == sorted(set(names))
    assert [scene.appearance_group_names[i] for i in scene.cameras.appearance_id.tolist()] == names
    folders = sorted({n.split("/")[0] for n in names})
    assert folders == ["test", "train", "val"]
    assert make_groups(root, "dirname") == {d: sorted({n for n in names if n.startswith(d + "/")}) for d in folders}
    with pytest.raises(DatasetError, match="--data.params.blender.appearance_groups"):
        load_scene(root, DataParams(blender=BlenderParams(appearance_groups="nothing")))
