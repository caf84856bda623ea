"""The viewer's speed: camera update -> encoded frame, moving and still, frames per second while the
camera moves, and what `main.py fit --viewer` costs training without a connected tab.

    .venv/bin/python bench/viewer.py --model outputs/bench-lego400-7000          # 7k lego (~112k Gaussians)
    .venv/bin/python bench/viewer.py --model M --sizes 112000,300000,1000000     # grown copies of M as well
    .venv/bin/python bench/viewer.py --live-only                                  # training with/without --viewer

Frames go through the viewer's own pieces: RenderLoop (newest pose wins, MovingQuality, still frame
after 0.2 s) rendering with render_frame and sending with viser's set_background_image on a real server
(JPEG 50 moving / 90 still; no tab connected, so the encode is measured and nothing waits on a network).
A camera orbits the model's centre at 60 updates per second for --seconds; latency is from the update
of the pose a frame shows to the end of its encode.

Models of other sizes than the file's are grown from it by splitting each Gaussian into k jittered
copies (scales / k^(1/3), inside the original ellipsoid), or thinned by a random subset: the picture
stays about the same, the per-frame work scales with the count. Say so when reporting.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internal.camera_path import quat_to_rotmat  # noqa: E402
from internal.loading import LoadedModel, default_view, estimate_up, load_model, look_at, robust_bounds, sort_by_visibility  # noqa: E402
from internal.splats import Splats  # noqa: E402
from internal.viewer.frames import CameraState, DisplaySettings, MovingQuality, render_frame  # noqa: E402
from internal.viewer.loop import RenderLoop, render_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def resized(model: LoadedModel, n: int, seed: int = 0) -> LoadedModel:
    s = model.splats
    g = torch.Generator().manual_seed(seed)
    if n <= len(s):
        idx = torch.randperm(len(s), generator=g)[:n]
        splats = Splats(**{k: getattr(s, k)[idx] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")})
    else:
        k = math.ceil(n / len(s))
        idx = torch.arange(len(s)).repeat(k)[:n]
        R = torch.from_numpy(quat_to_rotmat(s.quats[idx].double().numpy())).float()
        local = torch.randn(n, 3, generator=g) * torch.exp(s.scales[idx]) * 0.5
        means = s.means[idx] + (R @ local[..., None])[..., 0]
        splats = Splats(means=means, quats=s.quats[idx], scales=s.scales[idx] - math.log(k) / 3.0,
                        opacities=s.opacities[idx], sh0=s.sh0[idx], shN=s.shN[idx])
    return LoadedModel(splats=splats, source=model.source, step=model.step, cameras=model.cameras,
                       background=model.background, renderer=None, appearance_groups=[])


def orbit(model: LoadedModel, width: int, height: int):
    """Poses on a circle about the content's centre, at the first view's distance and height."""
    c2w, fov = default_view(model)
    centre, _ = robust_bounds(model.splats)
    up = estimate_up(model.cameras)
    eye = c2w[:3, 3] - centre
    height_along_up = float(eye @ up)
    radial = eye - height_along_up * up
    r = float(np.linalg.norm(radial))
    e1 = radial / max(r, 1e-9)
    e2 = np.cross(up, e1)

    def pose(angle: float) -> CameraState:
        p = centre + height_along_up * up + r * (math.cos(angle) * e1 + math.sin(angle) * e2)
        return CameraState(look_at(p, centre, up), fov, width, height)

    return pose


def still_latency(model, pose, server, width, height, frames: int, threads=None):
    settings = DisplaySettings()
    default = torch.get_num_threads()
    out = []
    for i in range(frames + 1):
        torch.set_num_threads(render_threads(threads, default))  # as the viewer's render loop chooses
        cam = pose(0.05 * i)
        t0 = time.perf_counter()
        img = render_frame(model, cam, settings, width, height)
        server.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
        if i:  # the first one warms caches (activations, allocator)
            out.append(time.perf_counter() - t0)
    return out


def moving(model, pose, server, width, height, seconds: float, threads=None):
    """Orbit for `seconds` at 60 pose updates/s through a RenderLoop; latency and size of each moving frame."""
    settings = DisplaySettings()
    sent_at = {}
    frames = []
    fractions = []
    lock = threading.Lock()

    def render(cam, w, h, fraction):
        with lock:
            fractions.append(fraction)
        return render_frame(model, cam, settings, w, h, fraction)

    def send(img, is_moving, cam):
        server.scene.set_background_image(img, format="jpeg", jpeg_quality=50 if is_moving else 90)
        with lock:
            if is_moving:
                frames.append((time.perf_counter() - sent_at[id(cam)], img.shape[1], img.shape[0]))

    quality = MovingQuality(target_seconds=1 / 12)
    loop = RenderLoop(render, send, lambda c: (c.width, c.height), quality=quality, threads=threads).start()
    # Seed the resolution as the app does: one still frame first.
    loop.update_camera(pose(0.0))
    time.sleep(0.3)
    while loop.stats.frames == 0 or loop.stats.moving:
        time.sleep(0.05)
    frames.clear()
    t_start = time.perf_counter()
    keep = []
    i = 0
    while time.perf_counter() - t_start < seconds:
        cam = pose(0.01 * i)
        keep.append(cam)  # ids stay unique while the poses are alive
        with lock:
            sent_at[id(cam)] = time.perf_counter()
        loop.update_camera(cam)
        i += 1
        time.sleep(1 / 60)
    elapsed = time.perf_counter() - t_start
    loop.stop()
    with lock:
        done = list(frames)
        drawn = fractions[-len(done):] if done else []
    return done, elapsed, drawn


def fmt_ms(values):
    return f"{1000 * statistics.median(values):.0f} ms" if values else "-"


def bench_models(args, server) -> None:
    base = load_model(args.model)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [base.num_gaussians]
    W, H = args.width, args.height
    print(f"model {base.source} ({base.num_gaussians:,} Gaussians, SH degree {base.splats.sh_degree}), "
          f"{W}x{H}, render threads: {args.threads or 'all cores'} (auto now: "
          f"{render_threads('auto', torch.get_num_threads())})")
    print(f"{'Gaussians':>10} | {'still (render+JPEG)':>19} | {'moving latency':>14} | {'moving fps':>10} | "
          f"{'moving size':>11} | {'drawn':>5} | still/moving")
    for n in sizes:
        model = sort_by_visibility(base if n == base.num_gaussians else resized(base, n))  # as StaticSource does
        pose = orbit(model, W, H)
        still = still_latency(model, pose, server, W, H, args.still_frames, args.threads)
        done, elapsed, drawn = moving(model, pose, server, W, H, args.seconds, args.threads)
        lat = [d[0] for d in done]
        fps = len(done) / elapsed if elapsed else 0.0
        size = f"{int(statistics.median(d[1] for d in done))}x{int(statistics.median(d[2] for d in done))}" if done else "-"
        ratio = statistics.median(still) / statistics.median(lat) if lat else float("nan")
        grown = "" if n == base.num_gaussians else (" (grown)" if n > base.num_gaussians else " (subset)")
        share = f"{statistics.median(drawn):.0%}" if drawn else "-"
        print(f"{n:>10,} | {fmt_ms(still):>19} | {fmt_ms(lat):>14} | {fps:>10.1f} | {size:>11} | {share:>5} | "
              f"{ratio:.2f}x{grown}", flush=True)


def bench_live(args) -> None:
    """Median training step time with `--viewer` (no tab connected) against without, alternating runs."""
    import lightning

    from internal.cli import GSCLI
    from internal.demo_scene import generate_demo_scene
    from internal.viewer.app import free_port
    from internal.viewer.live import TrainingGate

    gate = TrainingGate()
    t0 = time.perf_counter()
    for _ in range(100_000):
        gate.begin_step()
        gate.end_step()
    per_step = (time.perf_counter() - t0) / 100_000
    print(f"TrainingGate begin+end without a tab: {per_step * 1e6:.1f} us per step")

    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    generate_demo_scene(root / "data", width=args.live_size, height=args.live_size, n_views=12, ss=1, n_points=500,
                        formats=("blender",))

    class StepTimes(lightning.Callback):
        def __init__(self):
            self.times, self._t = [], None

        def on_train_batch_start(self, *a):
            self._t = time.perf_counter()

        def on_train_batch_end(self, *a):
            self.times.append(time.perf_counter() - self._t)

    def run(with_viewer: bool, k: int) -> list[float]:
        extra = ["--viewer", "--viewer_port", str(free_port())] if with_viewer else []
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            sys.argv = ["main.py"]
            cli = GSCLI(args=["--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
                              "--data.path", str(root / "data" / "blender"), "-n", f"run{k}", "--output", str(root / "out"),
                              "--trainer.max_steps", str(args.live_steps), "--trainer.val_check_interval", str(args.live_steps),
                              "--save_steps", f"[{args.live_steps}]", "--checkpoint_every", str(args.live_steps),
                              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                              "--trainer.logger", "false", "--model.save_renders", "false", *extra], run=False)
        finally:
            os.chdir(cwd)
        rec = StepTimes()
        cli.trainer.callbacks.append(rec)
        cli.trainer.fit(cli.model, cli.datamodule)
        return rec.times[args.live_steps // 5:]  # after warm-up

    results = {False: [], True: []}
    for k in range(args.live_pairs):
        for with_viewer in ((False, True) if k % 2 == 0 else (True, False)):
            results[with_viewer].append(statistics.median(run(with_viewer, 2 * k + with_viewer)))
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"training step ({args.live_size} px demo scene, {args.live_steps} steps x {args.live_pairs} pairs): "
          f"without viewer {1000 * off:.1f} ms, with --viewer and no tab {1000 * on:.1f} ms: {on / off:.3f}x "
          f"(per-run medians {[f'{1000 * v:.1f}' for v in results[False]]} vs {[f'{1000 * v:.1f}' for v in results[True]]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="outputs/bench-lego400-7000", help="checkpoint, output folder or .ply")
    ap.add_argument("--sizes", default=None, help="comma-separated Gaussian counts (default: the model's own)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--seconds", type=float, default=6.0, help="orbit duration per model")
    ap.add_argument("--still-frames", type=int, default=5)
    ap.add_argument("--threads", default=None,
                    help="render threads: a number, auto (as viewer.py: one while the load is high) or all cores")
    ap.add_argument("--live", action="store_true", help="also measure training with/without --viewer")
    ap.add_argument("--live-only", action="store_true")
    ap.add_argument("--live-steps", type=int, default=150)
    ap.add_argument("--live-pairs", type=int, default=2)
    ap.add_argument("--live-size", type=int, default=96)
    args = ap.parse_args()
    if args.threads not in (None, "auto"):
        args.threads = int(args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M')} · load {os.getloadavg()[0]:.1f} (1 min) · {os.cpu_count()} CPUs")
    if not args.live_only:
        import viser

        from internal.viewer.app import free_port

        server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
        try:
            bench_models(args, server)
        finally:
            server.stop()
    if args.live or args.live_only:
        bench_live(args)


if __name__ == "__main__":
    main()
