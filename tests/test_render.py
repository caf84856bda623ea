"""render.py: trajectory videos of a model trained here on the demo scene (tiny, CPU).

The mp4 is decoded again (frame count and size); ellipse frames must look at the scene; camera-path
JSON files are rendered as the viewer saves them, and bad ones are one-line errors.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from internal.camera_path import CameraPath, CameraPose
from internal.loading import load_model
from internal.render_video import VideoOptions, render_frames, render_video, trajectory
from internal.trajectories import look_at

REPO = Path(__file__).resolve().parents[1]
STEPS = 150


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """outputs/<name> of a short run on the demo scene (Blender layout: white background)."""
    from internal.cli import GSCLI
    from internal.demo_scene import generate_demo_scene

    root = tmp_path_factory.mktemp("render")
    generate_demo_scene(root / "demo", width=64, height=64, n_views=16, ss=1, n_points=500, formats=("blender",))
    import os

    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["main.py"]
    os.chdir(REPO)
    try:
        cli = GSCLI(args=[
            "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
            "--data.path", str(root / "demo" / "blender"), "-n", "demo", "--output", str(root / "outputs"),
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS), "--save_steps", f"[{STEPS}]",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--data.params.blender.random_points", "3000",
        ], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return root / "outputs" / "demo"


def decode(path: Path) -> tuple[int, tuple[int, int], np.ndarray]:
    """(frame count, (width, height), first frame HxWx3) of an mp4, decoded by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    return len(frames), (w, h), frames[0]


def run_render(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "render.py"), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600)


def one_line_error(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_ellipse_video_has_the_frames_and_size_asked(trained, tmp_path):
    out = tmp_path / "ellipse.mp4"
    r = render_video(trained, VideoOptions(traj="ellipse", frames=9, resolution="64x48", output=str(out), save_images=True))
    assert r.path == out and r.frames == 9
    n, size, first = decode(out)
    assert n == 9 and size == (64, 48)
    pngs = sorted((tmp_path / "ellipse").glob("*.png"))
    assert len(pngs) == 9 and Image.open(pngs[0]).size == (64, 48)
    # the video holds the rendered frames (H.264 is lossy: close, not equal)
    png = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.float64)
    assert np.abs(first.astype(np.float64) - png).mean() < 6.0


def test_depth_side_by_side_and_default_output(trained):
    r = render_video(trained, VideoOptions(traj="train", frames=3, resolution="40", depth=True))
    assert r.path == trained / "videos" / f"train_{STEPS}.mp4"  # beside the run, named by trajectory and step
    n, size, first = decode(r.path)
    assert n == 3 and size == (80, 40)  # the demo cameras are square: 40 wide, 40 high, depth beside
    left, right = first[:, :40].astype(float), first[:, 40:].astype(float)
    assert np.abs(left - right).mean() > 10  # the depth half is not a copy of the colour half


def test_ellipse_frames_look_at_the_scene(trained):
    model = load_model(trained)
    o = VideoOptions(traj="ellipse", frames=8)
    c2ws, fovs, size, _, _ = trajectory(model, o)
    W = H = 48
    centre = np.median(model.splats.means.numpy().astype(np.float64), axis=0)  # the scene's centre
    for k, rgb in enumerate(render_frames(model, c2ws, fovs, W, H, o)):
        f = 0.5 * H / math.tan(0.5 * fovs[k])
        x = np.linalg.inv(c2ws[k]) @ np.append(centre, 1.0)
        u, v = f * x[0] / x[2] + W / 2, f * x[1] / x[2] + H / 2
        assert x[2] > 0 and abs(u - W / 2) < 0.1 * W and abs(v - H / 2) < 0.1 * H, (k, u, v)
        # and what is drawn (not the white background) sits around the image centre
        ink = (255 - rgb.astype(np.float64).min(axis=2)) / 255
        assert ink.mean() > 0.05, "the frame shows nothing"
        ys, xs = np.mgrid[0:H, 0:W] + 0.5
        cu, cv = (ink * xs).sum() / ink.sum(), (ink * ys).sum() / ink.sum()
        assert abs(cu - W / 2) < 0.15 * W and abs(cv - H / 2) < 0.15 * H, (k, cu, cv)


def test_interp_passes_through_the_training_cameras_and_train_renders_them(trained):
    model = load_model(trained)
    c2ws, _, _, _, _ = trajectory(model, VideoOptions(traj="interp", frames=31))
    cams = np.stack([_c2w(e) for e in model.cameras])
    assert len(c2ws) == 31 and np.allclose(c2ws[0], cams[0], atol=1e-6) and np.allclose(c2ws[-1], cams[-1], atol=1e-6)
    steps = np.linalg.norm(np.diff(c2ws[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 4 * np.median(steps)  # smooth: no jumps
    c2ws, fovs, size, _, _ = trajectory(model, VideoOptions(traj="train"))
    assert np.allclose(c2ws, cams) and size == (64, 64)
    # the spiral circles the mean camera and keeps the scene in front of it
    c2ws, fovs, _, _, name = trajectory(model, VideoOptions(traj="spiral", frames=12))
    centre = np.median(model.splats.means.numpy().astype(np.float64), axis=0)
    to_centre = centre - c2ws[:, :3, 3]
    cos = np.einsum("ni,ni->n", c2ws[:, :3, 2], to_centre) / np.linalg.norm(to_centre, axis=1)
    assert name == "spiral" and len(c2ws) == 12 and cos.min() > 0.8, cos
    assert np.ptp(c2ws[:, :3, 3], axis=0).max() > 0  # it moves


def _c2w(e):
    m = np.eye(4)
    m[:3, :3] = np.asarray(e["rotation"])
    m[:3, 3] = e["position"]
    return m


def test_camera_path_json_from_the_viewer(trained, tmp_path):
    path = CameraPath(keyframes=[CameraPose(look_at([3, 0, 1], [0, 0, 0], [0, 0, 1]), 45.0),
                                 CameraPose(look_at([0, 3, 1], [0, 0, 0], [0, 0, 1]), 45.0)],
                      fps=10, seconds=1.2, width=36, height=24)
    path.save(tmp_path / "path.json")
    proc = run_render(trained, "--traj", tmp_path / "path.json", "-o", tmp_path / "p.mp4")
    assert proc.returncode == 0, proc.stderr
    assert "frames/s" in proc.stderr
    n, size, _ = decode(tmp_path / "p.mp4")
    assert n == 12 and size == (36, 24)  # fps x seconds, the file's own size
    r = render_video(trained, VideoOptions(traj=str(tmp_path / "path.json"), frames=5, resolution="20x16", output=str(tmp_path / "q.mp4")))
    assert decode(r.path)[:2] == (5, (20, 16))


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    line = one_line_error(run_render(trained, "--traj", bad))
    assert str(bad) in line and "JSON" in line
    bad.write_text(json.dumps({"format": "splat-lightning-camera-path", "version": 1, "keyframes": [{"c2w": [[1, 0], [0, 1]], "fov_y_deg": 40}]}))
    assert "c2w" in one_line_error(run_render(trained, "--traj", bad))
    line = one_line_error(run_render(trained, "--traj", "circle"))
    assert "--traj circle" in line and "ellipse" in line
    assert "--resolution" in one_line_error(run_render(trained, "--resolution", "big"))
    assert "appearance" in one_line_error(run_render(trained, "--appearance_group", "sunny", "--frames", "1"))
    # a lone .ply has no training cameras: say how to give them
    ply = tmp_path / "alone.ply"
    shutil.copy(next((trained / "point_cloud").glob("iteration_*/point_cloud.ply")), ply)
    assert "--cameras" in one_line_error(run_render(ply, "--traj", "ellipse"))
    r = render_video(ply, VideoOptions(traj="ellipse", frames=2, resolution="16", cameras=str(trained / "cameras.json")))
    assert decode(r.path)[:2] == (2, (16, 16)) and r.path.parent == tmp_path / "videos"
