"""render.py's speed: frames/s of a trajectory video, and what the encoder and the depth panel cost.

    .venv/bin/python bench/render.py outputs/bench-lego400-7000 [--frames 30] [--resolution 800x800]

Side by side on the same model and ellipse: rendering alone (render_frames, frames dropped), the whole
render.py path (rendering + H.264 encoding into an mp4), and the whole path with --depth. Prints each
one's frames/s, the ratios to rendering alone, and the CPU seconds per frame (this process's threads and
the ffmpeg encoder's, which it waits for): on a shared machine the wall-clock rate depends on the load,
the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from internal.loading import load_model  # noqa: E402
from internal.progress import console  # noqa: E402
from internal.render_video import VideoOptions, parse_resolution, render_frames, render_video, trajectory  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the ffmpeg encoder)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="checkpoint, output folder or .ply (with its cameras.json)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--resolution", default="800x800")
    ap.add_argument("--traj", default="ellipse")
    args = ap.parse_args()
    model = load_model(args.model)
    o = VideoOptions(traj=args.traj, frames=args.frames, resolution=args.resolution)
    c2ws, fovs, size, _, _ = trajectory(model, o)
    w, h = parse_resolution(args.resolution, size)
    print(f"{model.source}: {model.num_gaussians:,} Gaussians, {args.traj}, {len(c2ws)} frames at {w}x{h}, torch threads {__import__('torch').get_num_threads()}")
    rows, cpu = {}, {}
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in render_frames(model, c2ws, fovs, w, h, o):
        pass
    rows["render only"] = len(c2ws) / (time.perf_counter() - t0)
    cpu["render only"] = (cpu_seconds() - c0) / len(c2ws)
    quiet = console()
    quiet.quiet = True
    with tempfile.TemporaryDirectory() as d:
        for label, depth in (("render.py (mp4)", False), ("render.py --depth", True)):
            c0 = cpu_seconds()
            r = render_video(args.model, VideoOptions(traj=args.traj, frames=args.frames, resolution=args.resolution,
                                                      depth=depth, output=str(Path(d) / f"{depth}.mp4")), out=quiet)
            rows[label] = r.fps
            cpu[label] = (cpu_seconds() - c0) / r.frames
    base = rows["render only"]
    for label, fps in rows.items():
        print(f"{label:<20} {fps:7.2f} frames/s   {fps / base:5.2f}x of rendering alone   {cpu[label]:6.3f} CPU s/frame")


if __name__ == "__main__":
    main()
