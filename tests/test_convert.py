"""convert.py: photos -> COLMAP scene (pycolmap), then trained through the CLI; its errors and re-runs.

The statue's 23 photos (shared data, its model left behind) go through the whole pipeline once per
session (module fixture); the poses found are compared with the shared COLMAP model up to a
similarity, and 200 training steps on the result must beat a mean-colour image on held-out views.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import LEGO_400, STATUE, shared
from internal.data import load_scene
from internal.data.colmap_model import qvec_to_rotmat, read_model
from internal.data.errors import DatasetError
from internal.data.sfm import ConvertOptions, convert, resolve_paths

REPO = Path(__file__).resolve().parents[1]


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "convert.py"), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600)


def centres(model) -> dict[str, np.ndarray]:
    return {im.name: -qvec_to_rotmat(im.qvec).T @ im.tvec for im in model.images}


def similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance after the least-squares similarity b ~ s R a + t, relative to b's spread."""
    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    U, S, Vt = np.linalg.svd(B.T @ A)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (A ** 2).sum()
    res = B - s * A @ R.T
    return float(np.sqrt((res ** 2).sum(1).mean()) / np.sqrt((B ** 2).sum(1).mean()))


@pytest.fixture(scope="module")
def statue_scene(tmp_path_factory):
    photos_src = shared(STATUE, "images")
    root = tmp_path_factory.mktemp("convert")
    photos = root / "photos"
    shutil.copytree(photos_src, photos)  # the photos only: the shared model stays behind
    scene = root / "scene"
    proc = run_convert(photos, "-o", scene, "--resize", "4")
    assert proc.returncode == 0, proc.stderr
    return photos, scene, proc.stderr


def test_statue_photos_become_a_scene_the_trainer_reads(statue_scene):
    photos, scene, log = statue_scene
    for stage in ("features", "matching", "mapping", "undistortion", "resize"):
        assert f"] {stage}: " in log, log
    assert "registered 23 of 23 photos" in log
    assert f"python main.py fit --data.path {scene}" in log

    model = read_model(scene / "sparse" / "0")  # sparse/0, as the parser wants it, not sparse/*.bin
    assert {c.model for c in model.cameras.values()} == {"PINHOLE"}
    assert len(model.images) == 23 and len(model.points_xyz) > 1000
    for im in model.images:
        cam = model.cameras[im.camera_id]
        with Image.open(scene / "images" / im.name) as f:
            assert f.size == (cam.width, cam.height)
        with Image.open(scene / "images_4" / im.name) as f:
            assert abs(f.size[0] - cam.width / 4) <= 1 and abs(f.size[1] - cam.height / 4) <= 1
    # auto camera mode: one camera per image size (the statue's photos are 1000 x 656..662)
    sizes = {Image.open(p).size for p in photos.iterdir()}
    assert len(read_model(scene / "distorted" / "sparse" / "0").cameras) == len(sizes) > 1

    # The poses agree with the COLMAP model shipped with the photos, up to a similarity.
    ref = centres(read_model(shared(STATUE, "sparse", "0")))
    ours = centres(model)
    names = sorted(ref)
    assert similarity_residual(np.array([ours[n] for n in names]), np.array([ref[n] for n in names])) < 0.02

    s = load_scene(scene)
    assert len(s.image_names) == 23 and s.kind == "colmap"


def test_rerun_skips_finished_stages_and_redo_reruns_from_a_stage(statue_scene):
    _, scene, _ = statue_scene
    before = (scene / "sparse" / "0" / "images.bin").stat().st_mtime_ns
    r = convert(scene, options=ConvertOptions(resize=(4,)))  # the scene remembers its photo folder
    assert r.ran == [] and len(r.registered) == 23
    assert (scene / "sparse" / "0" / "images.bin").stat().st_mtime_ns == before
    r = convert(scene, options=ConvertOptions(resize=(4,)), redo="resize")
    assert r.ran == ["resize"]
    # different options invalidate the stages they feed, and only those
    r = convert(scene, options=ConvertOptions(resize=(4, 8)))
    assert r.ran == ["resize"] and (scene / "images_8").is_dir() and (scene / "images_4").is_dir()


def test_training_200_steps_on_the_converted_scene(statue_scene, tmp_path, monkeypatch):
    from internal.cli import GSCLI

    _, scene, _ = statue_scene
    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.chdir(REPO)
    steps = 200
    cli = GSCLI(args=[
        "--config", "configs/colmap.yaml", "--config", "configs/cpu_fast.yaml",
        "--data.path", str(scene), "-n", "statue", "--output", str(tmp_path),
        "--data.params.colmap.down_sample_factor", "4",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--save_steps", f"[{steps}]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    exp = tmp_path / "statue"
    assert (exp / "checkpoints" / f"step={steps}.ckpt").is_file()
    rows = list(csv.DictReader(open(exp / "metrics" / f"val-step={steps}.csv")))
    psnr = {r["image"]: float(r["psnr"]) for r in rows}
    # Held-out views: with wrong poses the model could not beat each image's mean colour.
    baseline = []
    for name in (n for n in psnr if n != "MEAN"):
        gt = np.asarray(Image.open(scene / "images_4" / name).convert("RGB"), dtype=np.float64) / 255
        baseline.append(-10 * np.log10(((gt - gt.reshape(-1, 3).mean(0)) ** 2).mean()))
    assert psnr["MEAN"] > np.mean(baseline) + 0.5, (psnr, baseline)


# ------------------------------------------------------------------------------------------------
# errors: one line, naming the file or option, exit status 1


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_empty_photo_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    line = one_line_error(run_convert(tmp_path / "photos", "-o", tmp_path / "scene"))
    assert str(tmp_path / "photos") in line and "0 photos" in line and "notes.txt" in line and "at least 2" in line


def test_input_errors_name_the_file_or_option(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(photos / "a.jpg")
    with pytest.raises(DatasetError, match=r"1 photo \(a.jpg\).*at least 2"):
        convert(photos, tmp_path / "scene")
    (photos / "b.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    with pytest.raises(DatasetError, match=r"b\.jpg: cannot be read as a photo"):
        convert(photos, tmp_path / "scene")
    (photos / "b.jpg").unlink()
    Image.new("RGB", (64, 40), (10, 20, 30)).save(photos / "b.jpg")
    with pytest.raises(DatasetError, match=r"--single_camera needs photos of one size, but a.jpg is 64x48 and b.jpg is 64x40"):
        convert(photos, tmp_path / "scene", ConvertOptions(camera_mode="single"))
    with pytest.raises(DatasetError, match="give -o SCENE"):
        convert(photos)
    with pytest.raises(DatasetError, match="inside the photo folder"):
        convert(photos, photos / "scene")
    with pytest.raises(DatasetError, match=r"--resize 1: factors must be integers >= 2"):
        convert(photos, tmp_path / "scene", ConvertOptions(resize=(1,)))
    with pytest.raises(DatasetError, match=r"--redo meshing: unknown stage"):
        convert(photos, tmp_path / "scene", redo="meshing")
    # a scene someone else made is not overwritten without --force
    other = tmp_path / "other"
    (other / "sparse" / "0").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"sparse: already exists and was not written by convert.py.*--force"):
        convert(photos, other)
    # photos in SCENE/images would be overwritten by the undistorted ones
    (tmp_path / "s2" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"images: would be overwritten.*-o SCENE"):
        convert(tmp_path / "s2")
    with pytest.raises(DatasetError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "scene")


def test_layouts(tmp_path):
    # the original convert.py's layout: SCENE/input holds the photos and the scene is SCENE
    (tmp_path / "a" / "input").mkdir(parents=True)
    assert resolve_paths(tmp_path / "a", None) == (tmp_path / "a" / "input", tmp_path / "a")
    assert resolve_paths(tmp_path / "a", tmp_path / "out") == (tmp_path / "a" / "input", tmp_path / "out")
    # a scene folder with images/ only: its photos, written elsewhere
    (tmp_path / "b" / "images").mkdir(parents=True)
    assert resolve_paths(tmp_path / "b", tmp_path / "out") == (tmp_path / "b" / "images", tmp_path / "out")


def test_too_few_registered_names_the_left_out_photos(tmp_path):
    """Three overlapping statue photos and five lego views of another scene: the model cannot hold
    most of them, and the error names the ones left out."""
    photos = tmp_path / "photos"
    photos.mkdir()
    statue = sorted(shared(STATUE, "images").iterdir())
    for p in statue[10:13]:
        with Image.open(p) as im:
            im.resize((500, round(im.height * 500 / im.width))).save(photos / p.name, quality=95)
    lego = [shared(LEGO_400, "train", f"r_{k}.png") for k in (0, 20, 40, 60, 80)]
    for p in lego:
        with Image.open(p) as im:
            im.convert("RGB").save(photos / f"lego_{p.stem}.png")
    line = one_line_error(run_convert(photos, "-o", tmp_path / "scene", "--max_image_size", "500"))
    assert "registered only" in line and "of 8 photos" in line
    for p in lego:
        assert f"lego_{p.stem}.png" in line
    assert "--min_registered 0.37" in line and "--camera_model" not in line  # SIMPLE_RADIAL already
    listed = (tmp_path / "scene" / "distorted" / "left_out.txt").read_text().split()
    assert {f"lego_{p.stem}.png" for p in lego} <= set(listed)
    # accepting it does not cost the mapping again, and the scene holds the registered photos only
    r = convert(photos, tmp_path / "scene", ConvertOptions(max_image_size=500, min_registered=0.3))
    assert r.ran == ["undistortion", "resize"]
    assert set(r.left_out) == set(listed) and len(r.registered) == 8 - len(listed) >= 2
    assert sorted(p.name for p in (tmp_path / "scene" / "images").iterdir()) == r.registered
