"""The viewer in a real browser: Debian's chromium (SwiftShader WebGL, headless) driven by Playwright.

Skipped, with the reason, where /usr/bin/chromium (or $GS_CHROMIUM) or the playwright package is
missing; .ci/run installs chromium with apt. Models stay small (a few thousand splats, 64 px training
images), pages 960x540. Screenshots are kept under the test's tmp folder (screenshots/*.png).
"""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import internal as gs
from internal.loading import intrinsics, load_model
from internal.viewer.app import ViewerApp, ViewerOptions, free_port
from internal.viewer.frames import render_frame
from internal.viewer.loop import RENDER_LOCK
from internal.viewer.sources import StaticSource
from viewer_helpers import REPO, tiny_run_fixture, with_groups

CHROMIUM = os.environ.get("GS_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--headless", "--enable-unsafe-swiftshader", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEW = (960, 540)
# Parts of the page the control panel (right) and viser's notices (top left) cover.
FREE = (slice(170, 540), slice(0, 540))

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-second.txt)")
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set GS_CHROMIUM",
)


run = tiny_run_fixture()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def app(run, tmp_path):
    viewer = ViewerApp(StaticSource(load_model(run), save_dir=tmp_path / "viewer"),
                       ViewerOptions(host="127.0.0.1", port=free_port())).start()
    yield viewer
    viewer.stop()


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def wait_for(cond, timeout=60.0, what="condition", page=None):
    """Poll `cond`; with a page, poll through Playwright so that the page's events are delivered meanwhile."""
    t0 = time.monotonic()
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        if page is not None:
            page.wait_for_timeout(50)
        else:
            time.sleep(0.05)


def open_page(browser, app, dpr: float = 1.0):
    page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
    connected = threading.Event()
    page.on("console", lambda m: "Connected" in m.text and connected.set())
    before = set(app.sessions)
    # fixedDpr=1: viser's page lowers its canvas resolution when it draws slowly (SwiftShader does), which
    # would change the frame size the server renders mid-test.
    page.goto(app.url() + f"/?fixedDpr={dpr:g}")
    wait_for(connected.is_set, what="viser's 'Connected'", page=page)
    session = wait_for(lambda: next((s for cid, s in list(app.sessions.items()) if cid not in before), None),
                       what="the client session")
    return page, session


def still_frame(session, after: int = 0, timeout=60.0):
    """Wait for a still frame sent after `after` frames; returns (image, camera)."""
    def ready():
        f = session.last_frame
        return f if f is not None and not f[1] and session.frames_sent > after else None

    img, _, camera = wait_for(ready, timeout, "a still frame")
    return img, camera


def settled(session, page, quiet=0.8):
    """Wait until the tab's camera has stopped (no frame for `quiet` s, the last one still); its camera."""
    t0 = time.monotonic()
    while True:
        n, f = session.frames_sent, session.last_frame
        page.wait_for_timeout(int(quiet * 1000))
        if f is not None and not f[1] and session.frames_sent == n:
            return f[2]
        if time.monotonic() - t0 > 60:
            raise AssertionError("the camera never settled")


def shot(page, path: Path) -> np.ndarray:
    from PIL import Image

    page.wait_for_timeout(400)  # let the page decode and draw the last frame
    page.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def page_shows(page, session, path: Path, timeout=30.0):
    """Screenshots until the page shows the session's newest still frame (SwiftShader decodes and draws
    it a little after it arrives); returns (screenshot, frame, camera) of the first match, or of the last
    try when none matched, for the caller's assertions to report."""
    t0 = time.monotonic()
    while True:
        img, camera = still_frame(session)
        screen = shot(page, path)
        diff = np.abs(screen[FREE] - img[FREE].astype(np.int16))
        if diff.mean() < 3.0 or time.monotonic() - t0 > timeout:
            return screen, img, camera


def drag(page, x, y, dx, dy, steps=10, release=True):
    """Orbit the camera with the mouse, as a user does (the page's controls want paced pointer events)."""
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, steps + 1):
        page.mouse.move(x + dx * k / steps, y + dy * k / steps)
        page.wait_for_timeout(30)
    if release:
        page.mouse.up()


def test_page_shows_the_server_render_and_it_matches_draw(browser, app, shots):
    page, session = open_page(browser, app)
    screen, img, camera = page_shows(page, session, shots / "rgb.png")
    # The still frame is the page's canvas at its full size ...
    assert (camera.width, camera.height) == VIEW and img.shape == (VIEW[1], VIEW[0], 3)
    # ... and is what internal.draw renders at the client's camera.
    model = app.source.snapshot()
    ref = gs.draw(model.splats, np.linalg.inv(camera.c2w), intrinsics(camera.fov_y, *VIEW), *VIEW,
                  background=model.background, device="cpu")[0, ..., :3].numpy()
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1
    # The page shows it (JPEG quality 90 in transit): compared where no control covers it.
    diff = np.abs(screen[FREE] - ref[FREE].astype(np.int16))
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 40, (diff.mean(), np.percentile(diff, 99))
    region = screen[FREE]
    assert region.std() > 10  # not blank
    assert (np.abs(region - np.array(model.background) * 255).sum(-1) > 30).mean() > 0.05  # content, not background
    body = page.inner_text("body")
    assert f"{model.num_gaussians:,} Gaussians" in body and "still" in body and "ms" in body
    page.close()


def test_moving_the_camera_and_the_render_mode_give_new_images(browser, app, shots):
    page, session = open_page(browser, app)
    first, img0, cam0 = page_shows(page, session, shots / "before.png")
    n = session.frames_sent
    drag(page, 250, 350, 120, 30)
    still_frame(session, after=n + 1)
    moved, img1, cam1 = page_shows(page, session, shots / "moved.png")
    assert not np.allclose(cam1.c2w, cam0.c2w)
    assert np.abs(moved[FREE] - first[FREE]).mean() > 2.0
    # The render-mode control (a select in the page) switches the frame to the depth colour map.
    n = session.frames_sent
    page.get_by_role("combobox", name="Mode").click()
    page.get_by_role("option", name="depth").click()
    wait_for(lambda: session.settings.mode == "depth", what="depth mode")
    depth_img, cam2 = still_frame(session, after=n)
    assert session.last_frame[0] is depth_img
    expect = render_frame(app.source.snapshot(), cam2, session.settings, cam2.width, cam2.height)
    assert np.array_equal(depth_img, expect)
    depth_screen, _, _ = page_shows(page, session, shots / "depth.png")
    assert np.abs(depth_screen[FREE] - moved[FREE]).mean() > 5.0
    # Training cameras: the checkbox shows their frustums; a click on one calls go_to with its pose.
    from internal.loading import camera_entry_c2w

    cams = app.source.snapshot().cameras
    assert len(app.frustums) == len(cams) and not any(f.visible for f in app.frustums)
    page.get_by_label("Training cameras").click()
    wait_for(lambda: all(f.visible for f in app.frustums), what="frustums shown", page=page)
    target = camera_entry_c2w(cams[3])
    fov = 2 * np.arctan(0.5 * cams[3]["height"] / cams[3]["fy"])
    session.go_to(target, fov)
    cam = settled(session, page)
    np.testing.assert_allclose(cam.c2w, target, atol=1e-4)  # the page's camera took the pose and sent it back
    assert cam.fov_y == pytest.approx(fov, rel=1e-4)
    page.close()


def test_browser_mode_draws_splats_in_the_page(browser, app, shots):
    # Half the canvas resolution: SwiftShader fills every splat's pixels in software.
    page, session = open_page(browser, app, dpr=0.5)
    still_frame(session)
    page.get_by_text("Browser mode", exact=True).click()
    # click(), not check(): the page's checkbox follows the server's state, and SwiftShader drawing the
    # splats can keep the page too busy for Playwright's own check of the new state.
    page.get_by_label("Render in the browser").click()
    wait_for(lambda: session._splats_handle is not None, what="splats sent to the page", page=page)
    assert "DC colour" in page.inner_text("body")
    n = session.frames_sent
    page.wait_for_timeout(1500)
    screen = shot(page, shots / "browser_mode.png")
    assert session.frames_sent == n  # the server renders nothing meanwhile
    region = screen[FREE]
    # The page's own background is uniform; the splats make the region differ from it.
    corner = screen[VIEW[1] - 5:, :5].reshape(-1, 3).mean(0)
    assert (np.abs(region - corner).sum(-1) > 30).mean() > 0.05 and region.std() > 10
    page.get_by_label("Render in the browser").click(timeout=60_000)
    wait_for(lambda: session._splats_handle is None, what="browser mode off", page=page)
    still_frame(session, after=n)  # server rendering is back
    page.close()


def test_appearance_group_dropdown(browser, run, tmp_path, shots):
    """Hidden without appearance groups; with them (a stand-in renderer) the first group is drawn, and
    picking another renders through the renderer with its index."""
    plain = ViewerApp(StaticSource(load_model(run), save_dir=tmp_path / "plain"),
                      ViewerOptions(host="127.0.0.1", port=free_port())).start()
    try:
        page, session = open_page(browser, plain)
        still_frame(session)
        assert not session.group.visible and page.get_by_role("combobox", name="Appearance group").count() == 0
        page.close()
    finally:
        plain.stop()
    grouped = ViewerApp(StaticSource(with_groups(load_model(run)), save_dir=tmp_path / "grouped"),
                        ViewerOptions(host="127.0.0.1", port=free_port())).start()
    try:
        page, session = open_page(browser, grouped)
        assert session.settings.appearance_group == "morning"  # the first group until another is picked
        before, _, _ = page_shows(page, session, shots / "morning.png")
        assert grouped.source.snapshot().renderer.seen == 0
        n = session.frames_sent
        page.get_by_role("combobox", name="Appearance group").click()
        page.get_by_role("option", name="evening").click()
        wait_for(lambda: session.settings.appearance_group == "evening", what="the group setting", page=page)
        img, camera = still_frame(session, after=n)
        assert grouped.source.snapshot().renderer.seen == 1  # the renderer drew it with the group's index
        expect = render_frame(grouped.source.snapshot(), camera, session.settings, camera.width, camera.height)
        assert np.array_equal(img, expect)
        screen, _, _ = page_shows(page, session, shots / "evening.png")
        assert screen[FREE].mean() < before[FREE].mean() - 5.0  # the stand-in's evening is darker
        wait_for(lambda: "appearance evening" in page.inner_text("body"), what="the group in the status", page=page)
        page.close()
    finally:
        grouped.stop()


def test_screenshot_camera_path_json_and_video(browser, app, shots):
    from internal.camera_path import CameraPath

    page, session = open_page(browser, app)
    cam0 = settled(session, page)
    page.get_by_role("button", name="Screenshot (PNG)").click()
    png = wait_for(lambda: session.last_screenshot, what="the screenshot file")
    from PIL import Image

    assert Image.open(png).size == VIEW
    page.get_by_text("Camera path", exact=True).click()
    page.get_by_role("button", name="Add keyframe").click()
    wait_for(lambda: len(session.paths.path.keyframes) == 1, what="keyframe 1")
    n = session.frames_sent
    drag(page, 150, 450, 80, 20)  # below the notifications the screenshot left at the top left
    still_frame(session, after=n + 1)
    cam1 = settled(session, page)
    page.get_by_role("button", name="Add keyframe").click()
    wait_for(lambda: len(session.paths.path.keyframes) == 2, what="keyframe 2")
    for label, value in (("Video width", "64"), ("Video height", "48"), ("Duration (s)", "0.5"), ("FPS", "8")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Tab")
    # viser's text input is not tied to its label (the label's `for` names another id): find it by its row.
    name_box = page.locator("xpath=//label[normalize-space()='File name']/ancestor::div[contains(@class,'mantine-Flex-root')][1]//input")
    name_box.fill("orbit")
    name_box.press("Tab")
    wait_for(lambda: session.paths.path.width == 64 and session.paths.path.fps == 8 and session.paths.name.value == "orbit",
             what="the path options")
    page.get_by_role("button", name="Save JSON").click()
    saved = wait_for(lambda: session.paths.last_json, what="the JSON file")
    path = CameraPath.load(saved)
    assert saved.name == "orbit.json" and len(path.keyframes) == 2 and (path.width, path.height) == (64, 48)
    np.testing.assert_allclose(path.keyframes[0].c2w, cam0.c2w, atol=1e-9)
    np.testing.assert_allclose(path.keyframes[1].c2w, cam1.c2w, atol=1e-9)
    page.get_by_role("button", name="Render video (mp4)").click()
    video = wait_for(lambda: session.paths.last_video, timeout=120, what="the video")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert meta["size"] == (64, 48) and meta["codec"] == "h264" and sum(1 for _ in reader) == 4
    shot(page, shots / "camera_path.png")
    page.close()


def test_many_clients_and_a_client_leaving_mid_render(browser, app, shots):
    pages = [open_page(browser, app) for _ in range(3)]
    for _, s in pages:
        still_frame(s)
    # Slow renders down so that the tab below closes while its frame is being rendered.
    source = app.source
    original = source.snapshot
    source.snapshot = lambda: (time.sleep(0.4), original())[1]
    try:
        page, session = pages[0]
        drag(page, 300, 300, 40, 10, steps=4, release=False)
        wait_for(RENDER_LOCK.locked, what="a render in progress")
        page.close()
        wait_for(lambda: session.client.client_id not in app.sessions, what="the session to end")
        wait_for(lambda: not session.loop.alive, timeout=20, what="its render loop to end")
    finally:
        source.snapshot = original
    # The others keep working, and a new tab still connects and gets frames.
    for page, s in pages[1:]:
        n = s.frames_sent
        s.loop.invalidate()
        still_frame(s, after=n)
        assert s.last_error is None
        page.close()
    page, s = open_page(browser, app)
    still_frame(s)
    page.close()


def test_live_view_of_training_with_pause(browser, tmp_path, shots):
    """`main.py fit --viewer`: the page follows training, shows step/loss/Gaussians, and pause holds it."""
    import lightning

    from internal.cli import GSCLI
    from internal.demo_scene import generate_demo_scene
    from internal.viewer.live import LiveViewer

    paused_once = threading.Event()

    class Slow(lightning.Callback):  # slow until the test has paused and resumed, so the page sees training under way
        def on_train_batch_end(self, *args):
            if not paused_once.is_set():
                time.sleep(0.05)

    generate_demo_scene(tmp_path / "data", width=48, height=48, n_views=8, ss=1, n_points=300, formats=("blender",))
    port = free_port()
    mp = pytest.MonkeyPatch()
    mp.setattr("sys.argv", ["main.py"])
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        cli = GSCLI(args=["--config", "configs/blender.yaml", "--data.path", str(tmp_path / "data" / "blender"), "-n", "live",
                          "--output", str(tmp_path / "out"), "--trainer.max_steps", "300", "--trainer.val_check_interval", "300",
                          "--save_steps", "[300]", "--data.params.blender.random_points", "2000",
                          "--trainer.enable_progress_bar", "false", "--viewer", "--viewer_port", str(port)], run=False)
    finally:
        os.chdir(cwd)
        mp.undo()
    cli.trainer.callbacks.append(Slow())
    live = next(c for c in cli.trainer.callbacks if isinstance(c, LiveViewer))
    errors = []

    def train():
        try:
            cli.trainer.fit(cli.model, cli.datamodule)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    t = threading.Thread(target=train, name="training")
    t.start()
    try:
        wait_for(lambda: live.app is not None and live.app.server is not None, what="the live viewer")
        page, session = open_page(browser, live.app)
        still_frame(session)
        wait_for(lambda: "Step" in page.inner_text("body") and "loss" in page.inner_text("body"), what="training status")
        first_step = session._last_model.step
        # The view follows training while the camera is still (refresh every second by default).
        wait_for(lambda: session._last_model.step is not None and session._last_model.step > first_step + 5,
                 what="a refreshed frame")
        shot(page, shots / "live.png")
        page.get_by_role("button", name="Pause training").click()
        wait_for(lambda: live.gate.paused, what="pause")
        time.sleep(0.3)
        held = cli.trainer.global_step
        time.sleep(1.5)
        assert cli.trainer.global_step == held and t.is_alive()
        assert "paused" in page.inner_text("body")
        page.get_by_role("button", name="Resume training").click()
        paused_once.set()
        t.join(timeout=240)
        assert not t.is_alive() and not errors, errors
        assert cli.trainer.global_step == 300
        page.close()
    finally:
        paused_once.set()
        live.gate.close()
        t.join(timeout=60)
