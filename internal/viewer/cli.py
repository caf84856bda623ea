"""`python viewer.py PATH [start] [options]`: the command line of the web viewer."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

_UP_NAMES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
_COLOURS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}


class UsageError(ValueError):
    pass


def parse_colour(text: str) -> tuple[float, float, float]:
    """'white' / 'black' / 'R,G,B' (0..1, or 0..255 when any value is above 1)."""
    t = text.strip().lower()
    if t in _COLOURS:
        return _COLOURS[t]
    try:
        vals = [float(v) for v in t.replace(",", " ").split()]
    except ValueError:
        vals = []
    if len(vals) != 3 or any(v < 0 for v in vals) or any(not np.isfinite(v) for v in vals):
        raise UsageError(f"--background_color {text!r}: give white, black or three numbers R,G,B (0..1 or 0..255)")
    if any(v > 1 for v in vals):
        if any(v > 255 for v in vals):
            raise UsageError(f"--background_color {text!r}: values must be 0..1 or 0..255")
        vals = [v / 255.0 for v in vals]
    return tuple(vals)


def parse_up(text: str) -> np.ndarray | None:
    """'auto' -> None (from the training cameras); '+z', '-y', ... or 'x,y,z' -> a unit vector."""
    t = text.strip().lower()
    if t == "auto":
        return None
    if t in _UP_NAMES:
        return np.array(_UP_NAMES[t], dtype=np.float64)
    try:
        v = np.array([float(x) for x in t.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        v = np.zeros(0)
    if v.shape != (3,) or not np.isfinite(v).all() or np.linalg.norm(v) < 1e-9:
        raise UsageError(f"--up {text!r}: give auto, one of +x -x +y -y +z -z, or a vector x,y,z")
    return v / np.linalg.norm(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viewer.py",
        description="Web viewer for Gaussian splats: a checkpoint of ours (*.ckpt), an output folder "
                    "(outputs/<name>: its newest checkpoint, else its newest point_cloud.ply) or any INRIA-layout .ply.",
    )
    p.add_argument("path", help="checkpoint, output folder or .ply")
    p.add_argument("start", nargs="?", choices=["start"], help="optional, for users of the original viewer")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--background_color", default=None,
                   help="white, black or R,G,B (default: the training background, black for a .ply)")
    p.add_argument("--sh_degree", type=int, default=None, help="SH degree to render (default: all the model has)")
    p.add_argument("--image_format", choices=["jpeg", "png"], default="jpeg", help="how frames travel to the page")
    p.add_argument("--show_cameras", action="store_true", help="show the training cameras (cameras.json)")
    p.add_argument("--up", default="auto", help="world up: auto (from the training cameras), +z, -y, ... or x,y,z")
    p.add_argument("--backend", choices=["auto", "cpu", "gsplat", "torch"], default="auto",
                   help="rasterizer: auto (gsplat on a CUDA GPU, else our native CPU one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the Gaussians live")
    p.add_argument("--max_resolution", type=int, default=1920, help="long side of still frames (default 1920)")
    p.add_argument("--browser_budget", type=int, default=300_000,
                   help="Gaussians sent to the page in browser mode (the most visible first)")
    p.add_argument("--render_threads", default="auto",
                   help="CPU threads per render: a number, or auto (every core, one while the machine is busy "
                        "with other work: load above 1.5x the cores)")
    p.add_argument("--save_dir", default=None,
                   help="where screenshots, camera paths and videos go (default: <output folder>/viewer)")
    return p


def options_from_args(args, model):
    from .app import ViewerOptions

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port number 1..65535")
    if args.sh_degree is not None and not 0 <= args.sh_degree <= model.splats.sh_degree:
        raise UsageError(f"--sh_degree {args.sh_degree}: {model.source} carries SH degree 0..{model.splats.sh_degree}")
    if args.max_resolution < 16:
        raise UsageError(f"--max_resolution {args.max_resolution}: give at least 16 pixels")
    if args.render_threads != "auto" and not (str(args.render_threads).isdigit() and int(args.render_threads) >= 1):
        raise UsageError(f"--render_threads {args.render_threads}: give auto or a number >= 1")
    if args.browser_budget < 1:
        raise UsageError(f"--browser_budget {args.browser_budget}: give a positive number of Gaussians")
    return ViewerOptions(
        host=args.host, port=args.port,
        background=parse_colour(args.background_color) if args.background_color is not None else None,
        sh_degree=args.sh_degree, image_format=args.image_format, show_cameras=args.show_cameras,
        up=parse_up(args.up), backend=args.backend, max_resolution=args.max_resolution,
        browser_budget=args.browser_budget, save_dir=Path(args.save_dir) if args.save_dir else None,
        render_threads=args.render_threads if args.render_threads == "auto" else int(args.render_threads),
    )


def main(argv=None) -> None:
    """Load, serve, block until Ctrl-C. Bad input ends with a one-line error and exit status 1."""
    import torch

    from ..loading import ModelLoadError, load_model
    from .app import PortInUseError, ViewerApp
    from .sources import StaticSource

    args = build_parser().parse_args(argv)
    try:
        parse_up(args.up)  # option errors before a long load
        if args.background_color is not None:
            parse_colour(args.background_color)
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu")
        if args.backend == "gsplat" and device != "cuda":
            raise UsageError("--backend gsplat needs an NVIDIA GPU with CUDA (--device cuda); use --backend cpu here")
        if args.backend == "cpu" and device != "cpu":
            device = "cpu"
        print(f"[viewer] loading {args.path} …", flush=True)
        model = load_model(args.path, device=device)
        options = options_from_args(args, model)
        app = ViewerApp(StaticSource(model, options.save_dir), options)
        app.start()
    except (ModelLoadError, UsageError, PortInUseError, OSError) as exc:  # OSError: unreadable file, bad --host
        if os.environ.get("GS_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    step = f", step {model.step}" if model.step is not None else ""
    print(f"[viewer] {model.source} ({model.num_gaussians:,} Gaussians, SH degree {model.splats.sh_degree}{step})")
    print(f"[viewer] open {app.url()} in a browser (Ctrl-C to stop)", flush=True)
    app.wait()
    app.stop()


__all__ = ["main", "build_parser", "parse_colour", "parse_up", "UsageError"]
