"""The viewer without a browser: frames, the render loop's scheduling, browser-mode splats, the live
training gate, the command line's errors, and `main.py fit --viewer`. Real-browser tests are in
test_viewer_browser.py."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import internal as gs
from internal.loading import intrinsics, load_model
from internal.viewer.app import PortInUseError, check_port_free, free_port
from internal.viewer.browser import browser_splats
from internal.viewer.cli import UsageError, parse_colour, parse_up
from internal.viewer.frames import CameraState, DisplaySettings, MovingQuality, colorize_depth, frame_size, render_frame
from internal.viewer.live import TrainingGate
from internal.viewer.loop import ClientGone, RenderLoop
from internal.viewer.paths_panel import UnsafeNameError, safe_file
from viewer_helpers import tiny_run_fixture

REPO = Path(__file__).resolve().parents[1]


run = tiny_run_fixture()


def look(model):
    from internal.loading import default_view

    c2w, fov = default_view(model)
    return CameraState(c2w, fov, 64, 48)


# ---------------------------------------------------------------- frames

def test_camera_state_from_viser_quaternion_matches_the_matrix():
    from internal.camera_path import rotmat_to_quat

    rng = np.random.default_rng(0)
    A = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    A *= np.sign(np.linalg.det(A))
    cam = CameraState.from_wxyz(rotmat_to_quat(A), [1, 2, 3], 0.7, 640, 480)
    np.testing.assert_allclose(cam.c2w[:3, :3], A, atol=1e-12)
    np.testing.assert_allclose(cam.c2w[:3, 3], [1, 2, 3])


def test_render_frame_modes_agree_with_draw(run):
    model = load_model(run)
    cam = look(model)
    img = render_frame(model, cam, DisplaySettings(), 64, 48)
    ref = gs.draw(model.splats, np.linalg.inv(cam.c2w), intrinsics(cam.fov_y, 64, 48), 64, 48,
                  background=model.background, device="cpu")[0, ..., :3].numpy()
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1
    alpha = render_frame(model, cam, DisplaySettings(mode="alpha"), 64, 48)
    ref_a = gs.draw(model.splats, np.linalg.inv(cam.c2w), intrinsics(cam.fov_y, 64, 48), 64, 48, device="cpu")[0, ..., 3].numpy()
    assert np.abs(alpha[..., 0].astype(int) - ref_a.astype(int)).max() <= 1
    depth = render_frame(model, cam, DisplaySettings(mode="depth"), 64, 48)
    assert not np.array_equal(depth, img) and depth.std() > 5
    with pytest.raises(ValueError, match="unknown render mode"):
        render_frame(model, cam, DisplaySettings(mode="normals"), 64, 48)


def test_colorize_depth_clamps_and_keeps_the_background():
    depth = torch.tensor([[[1.0], [2.0], [50.0], [0.0]]])  # (1,4,1)
    alpha = torch.tensor([[[1.0], [1.0], [1.0], [0.0]]])
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = colorize_depth(depth, alpha, max_depth=2.0, background=bg)
    np.testing.assert_allclose(out[0, 3].numpy(), [0.2, 0.4, 0.6])  # nothing drawn: background
    np.testing.assert_allclose(out[0, 1].numpy(), out[0, 2].numpy())  # 2 and 50 both at the clamp
    assert not np.allclose(out[0, 0].numpy(), out[0, 1].numpy())


def test_frame_size_and_moving_quality():
    assert frame_size(1920, 1080, 1280) == (1280, 720)
    assert frame_size(800, 600, 1920) == (800, 600)
    q = MovingQuality(target_seconds=0.1, min_long_side=64, lod_long_side=320, min_fraction=0.1)
    q.observe(0.4, moving=False)
    assert q.plan(1280, 720) == (640, 360, 1.0)  # 0.4 s still -> half the side is 4x fewer pixels
    # A render whose time is proportional to the pixel count settles where it meets the target.
    for _ in range(20):
        w, h, f = q.plan(1280, 720)
        q.observe(0.6 * w * h / (1280 * 720), moving=True)
    w, h, f = q.plan(1280, 720)
    assert 0.6 * w * h / (1280 * 720) == pytest.approx(0.1, rel=0.15) and f == 1.0
    # A render dominated by a per-Gaussian cost: below 320 px the share of the Gaussians drawn goes down.
    q = MovingQuality(target_seconds=0.1, min_long_side=64, lod_long_side=320, min_fraction=0.1)
    for _ in range(40):
        w, h, f = q.plan(1280, 720)
        q.observe(0.02 + 0.4 * f, moving=True)
    w, h, f = q.plan(1280, 720)
    assert (w, h) == (320, 180) and 0.1 < f < 1 and 0.02 + 0.4 * f == pytest.approx(0.1, rel=0.15)
    # Never below the minimum, never above the still frame.
    for _ in range(60):
        q.observe(10.0, moving=True)
    assert q.plan(1280, 720) == (64, 36, 0.1)
    for _ in range(60):
        q.observe(1e-4, moving=True)
    assert q.plan(1280, 720) == (1280, 720, 1.0)
    # Without visibility order (a live training run) the Gaussians are never thinned.
    q = MovingQuality(target_seconds=0.1, min_fraction=1.0)
    for _ in range(60):
        q.observe(10.0, moving=True)
    assert q.plan(1280, 720)[2] == 1.0


# ---------------------------------------------------------------- the render loop

class FakeClient:
    """Records what a loop renders and sends; a render takes `cost` seconds per megapixel (+2 ms)."""

    def __init__(self, cost=0.2):
        self.cost = cost
        self.rendered, self.sent = [], []
        self.fail_next = False
        self.gone = False

    def render(self, cam, w, h, fraction=1.0):
        time.sleep(0.002 + self.cost * w * h / 1e6)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        self.rendered.append((int(cam.c2w[0, 3]), w, h))
        return np.zeros((h, w, 3), np.uint8)

    def send(self, img, moving, camera):
        if self.gone:
            raise ClientGone()
        self.sent.append((img.shape[1], img.shape[0], moving))


def cam_at(x):
    c2w = np.eye(4)
    c2w[0, 3] = x
    return CameraState(c2w, 0.8, 1280, 720)


def wait_for(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.01)
    return True


def test_loop_renders_newest_pose_then_a_full_still_frame():
    fake = FakeClient(cost=0.15)
    errors = []
    loop = RenderLoop(fake.render, fake.send, lambda c: (c.width, c.height), still_delay=0.2, on_error=errors.append).start()
    try:
        loop.update_camera(cam_at(1))
        assert wait_for(lambda: len(fake.rendered) >= 1)
        # A burst of poses while the first frame renders: only the newest of them is rendered next.
        for x in range(2, 30):
            loop.update_camera(cam_at(x))
        assert wait_for(lambda: any(r[1:] == (1280, 720) for r in fake.rendered))
        xs = [r[0] for r in fake.rendered]
        assert xs[0] == 1 and set(xs[1:]) == {29}, xs  # the stale poses 2..28 were never rendered
        moving = [s for s in fake.sent if s[2]]
        still = [s for s in fake.sent if not s[2]]
        assert moving and all(w < 1280 for w, _, _ in moving)
        assert still[-1][:2] == (1280, 720) and fake.sent[-1] == (1280, 720, False)
        n = len(fake.rendered)
        time.sleep(0.5)
        assert len(fake.rendered) == n  # still and unchanged: nothing more to render
        loop.invalidate()  # a setting changed: a new still frame, without a moving one first
        assert wait_for(lambda: len(fake.rendered) == n + 1)
        assert fake.sent[-1] == (1280, 720, False)
        assert not errors
    finally:
        loop.stop()


def test_loop_still_delay_counts_from_the_end_of_the_last_frame():
    """Frames slower than the still delay, and poses that arrive just after each frame ends (as when a
    busy machine delays them): moving frames only, until the poses stop; still means still_delay without
    a pose counted from the end of the last frame, not from the last pose."""
    fake = FakeClient(cost=0.0)
    slow = fake.render
    fake.render = lambda cam, w, h, fraction=1.0: (time.sleep(0.3), slow(cam, w, h))[1]
    loop = RenderLoop(fake.render, fake.send, lambda c: (64, 48), still_delay=0.2).start()
    try:
        for x in range(8):
            loop.update_camera(cam_at(x))
            time.sleep(0.35)
        loop.update_camera(cam_at(29))
        n_moving = len(fake.sent)
        assert n_moving >= 3 and all(moving for _, _, moving in fake.sent)
        assert wait_for(lambda: fake.sent and not fake.sent[-1][2])  # the still frame once they stop
        assert fake.rendered[-1][0] == 29
    finally:
        loop.stop()


def test_loop_survives_errors_and_ends_when_the_client_is_gone():
    fake = FakeClient(cost=0.0)
    errors = []
    loop = RenderLoop(fake.render, fake.send, lambda c: (64, 48), still_delay=0.05, on_error=errors.append).start()
    try:
        fake.fail_next = True
        loop.update_camera(cam_at(1))
        assert wait_for(lambda: errors and fake.rendered)  # the error was reported, the next frame rendered
        assert "boom" in str(errors[0]) and loop.alive
        fake.gone = True
        loop.update_camera(cam_at(2))
        assert wait_for(lambda: not loop.alive)
    finally:
        loop.stop()


def test_loop_follows_model_versions_while_still():
    fake = FakeClient(cost=0.0)
    version = [0]
    loop = RenderLoop(fake.render, fake.send, lambda c: (32, 32), still_delay=0.05, model_version=lambda: version[0],
                      refresh_seconds=lambda: 0.1).start()
    try:
        loop.update_camera(cam_at(1))
        assert wait_for(lambda: fake.sent and not fake.sent[-1][2])
        n = len(fake.sent)
        time.sleep(0.3)
        assert len(fake.sent) == n
        version[0] += 1  # training took a step
        assert wait_for(lambda: len(fake.sent) == n + 1)
        assert fake.sent[-1] == (32, 32, False)
        loop.set_paused(True)  # browser mode: nothing rendered
        version[0] += 1
        time.sleep(0.3)
        assert len(fake.sent) == n + 1
    finally:
        loop.stop()


# ---------------------------------------------------------------- browser mode

def test_browser_splats_covariances_and_budget(run):
    model = load_model(run)
    centers, covs, rgbs, opac = browser_splats(model, budget=10**9)
    n = model.num_gaussians
    assert centers.shape == (n, 3) and covs.shape == (n, 3, 3) and rgbs.shape == (n, 3) and opac.shape == (n, 1)
    s = model.splats
    q = (s.quats / s.quats.norm(dim=-1, keepdim=True)).double().numpy()
    from internal.camera_path import quat_to_rotmat

    R = quat_to_rotmat(q)
    S = np.exp(s.scales.double().numpy())
    expect = np.einsum("nij,nj,nkj->nik", R, S ** 2, R)
    np.testing.assert_allclose(covs, expect, rtol=2e-4, atol=1e-9)
    np.testing.assert_allclose(rgbs, np.clip(s.sh0[:, 0].numpy() * 0.28209479177387814 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(opac[:, 0], torch.sigmoid(s.opacities).numpy(), atol=1e-6)
    c2, cov2, _, op2 = browser_splats(model, budget=100, scaling_modifier=0.5)
    assert len(c2) == 100
    np.testing.assert_allclose(np.linalg.det(cov2), np.linalg.det(expect[[np.where((centers == c).all(1))[0][0] for c in c2]]) * 0.5 ** 6,
                               rtol=1e-3)
    # the kept ones are the most visible: none left out scores higher than the lowest kept
    score = opac[:, 0] * np.prod(S, axis=1) ** (2 / 3)
    kept = set(map(tuple, c2.round(6)))
    kept_scores = [sc for c, sc in zip(centers.round(6), score) if tuple(c) in kept]
    dropped_scores = [sc for c, sc in zip(centers.round(6), score) if tuple(c) not in kept]
    assert min(kept_scores) >= max(dropped_scores) - 1e-6


# ---------------------------------------------------------------- small parts

def test_option_parsers():
    assert parse_colour("white") == (1, 1, 1)
    assert parse_colour("255,128,0") == pytest.approx((1, 128 / 255, 0))
    assert parse_colour("0.1 0.2 0.3") == pytest.approx((0.1, 0.2, 0.3))
    with pytest.raises(UsageError, match="--background_color"):
        parse_colour("blue-ish")
    assert parse_up("auto") is None
    np.testing.assert_allclose(parse_up("-y"), [0, -1, 0])
    np.testing.assert_allclose(parse_up("0,0,2"), [0, 0, 1])
    with pytest.raises(UsageError, match="--up"):
        parse_up("0,0,0")


def test_safe_file_names(tmp_path):
    assert safe_file(tmp_path, "orbit", ".json") == tmp_path / "orbit.json"
    assert safe_file(tmp_path, "orbit.mp4", ".mp4") == tmp_path / "orbit.mp4"
    for bad in ("../x", "/etc/passwd", "a/b", ".hidden", "", ".."):
        with pytest.raises(UnsafeNameError):
            safe_file(tmp_path, bad, ".json")


def test_port_in_use_is_named():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} .*already in use.*--port"):
            check_port_free("0.0.0.0", port)
        with pytest.raises(PortInUseError, match="--viewer_port"):
            check_port_free("0.0.0.0", port, "--viewer_port")
    check_port_free("0.0.0.0", port)  # free again


def test_training_gate_takes_turns_and_pauses():
    gate = TrainingGate()
    in_step = threading.Event()
    overlaps, snaps, steps = [], [], []

    def train(n):
        for i in range(n):
            gate.begin_step()
            in_step.set()
            time.sleep(0.01)
            in_step.clear()
            steps.append(i)
            gate.end_step()

    def snap():
        for _ in range(20):
            with gate.between_steps():
                overlaps.append(in_step.is_set())
                snaps.append(gate.steps)
            time.sleep(0.003)

    t1, t2 = threading.Thread(target=train, args=(60,)), threading.Thread(target=snap)
    t1.start(), t2.start()
    t1.join(10), t2.join(10)
    assert len(snaps) == 20 and not any(overlaps)
    assert len(set(snaps)) > 5  # snapshots were taken between many different steps, not all at the end
    gate.set_paused(True)
    t = threading.Thread(target=train, args=(3,))
    t.start()
    time.sleep(0.3)
    assert len(steps) == 60  # paused: no step started
    gate.set_paused(False)
    t.join(5)
    assert len(steps) == 63
    gate.close()
    gate.begin_step()  # never blocks after close


# ---------------------------------------------------------------- command lines

def run_viewer(*args, timeout=120):
    return subprocess.run([sys.executable, "viewer.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_viewer_cli_bad_inputs_are_one_line(tmp_path, run):
    r = run_viewer(tmp_path / "missing.ckpt", "start")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {tmp_path / 'missing.ckpt'}: no such file or folder; pass a checkpoint of ours " \
                               "(*.ckpt), an output folder (outputs/<name>) or a Gaussian .ply"
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    r = run_viewer(notes)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "neither a checkpoint" in r.stderr
    corrupt = tmp_path / "x.ckpt"
    corrupt.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    r = run_viewer(corrupt)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a PyTorch checkpoint" in r.stderr and str(corrupt) in r.stderr
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_viewer(run, "--port", port)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"port {port}" in r.stderr and "--port" in r.stderr and "Traceback" not in r.stderr
    r = run_viewer(run, "--sh_degree", 3)
    assert r.returncode == 1 and "--sh_degree 3" in r.stderr and "0..0" in r.stderr


def test_fit_with_viewer_serves_while_training_and_stops_after(tmp_path):
    """`main.py fit --viewer`: the callback serves the page during training and releases the port after."""
    import urllib.request

    import lightning

    port = free_port()
    seen = {}

    class Probe(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "page" not in seen:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    seen["page"] = (r.status, r.read(2000))

    mp = pytest.MonkeyPatch()
    mp.setattr("sys.argv", ["main.py"])
    try:
        from internal.cli import GSCLI
        from internal.demo_scene import generate_demo_scene

        generate_demo_scene(tmp_path / "data", width=32, height=32, n_views=6, ss=1, n_points=200, formats=("blender",))
        import os

        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            cli = GSCLI(args=["--config", "configs/blender.yaml", "--data.path", str(tmp_path / "data" / "blender"),
                              "-n", "live", "--output", str(tmp_path / "out"), "--trainer.max_steps", "5",
                              "--trainer.val_check_interval", "5", "--save_steps", "[5]",
                              "--data.params.blender.random_points", "500", "--trainer.enable_progress_bar", "false",
                              "--viewer", "--viewer_port", str(port)], run=False)
        finally:
            os.chdir(cwd)
        from internal.viewer.live import LiveViewer

        live = [c for c in cli.trainer.callbacks if isinstance(c, LiveViewer)]
        assert len(live) == 1 and live[0].port == port
        cli.trainer.callbacks.append(Probe())
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        mp.undo()
    status, body = seen["page"]
    assert status == 200 and b"<html" in body.lower()
    assert live[0].app is None and live[0].gate.steps == 5
    check_port_free("0.0.0.0", port)  # released


def test_fit_with_viewer_on_a_busy_port_is_one_line(tmp_path):
    from internal.demo_scene import generate_demo_scene

    generate_demo_scene(tmp_path / "data", width=16, height=16, n_views=4, ss=1, n_points=100, formats=("blender",))
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "main.py", "fit", "--data.path", str(tmp_path / "data" / "blender"), "-n", "x",
                            "--output", str(tmp_path / "out"), "--trainer.max_steps", "2", "--viewer",
                            "--viewer_port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: port {port} on 0.0.0.0 is already in use" in r.stderr and "--viewer_port" in r.stderr


def test_fit_viewer_port_out_of_range_is_a_config_error(tmp_path):
    r = subprocess.run([sys.executable, "main.py", "fit", "--data.path", str(tmp_path), "-n", "x", "--output", str(tmp_path),
                        "--viewer", "--viewer_port", "70000"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "--viewer_port must be a port number 1..65535, got 70000" in r.stderr
