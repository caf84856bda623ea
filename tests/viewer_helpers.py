"""A tiny trained output folder for the loading, viewer and browser tests (the embedded demo scene)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_tiny(root: Path, steps: int = 40, size: int = 64, name: str = "tiny", extra=()) -> Path:
    """Train the demo scene (Blender format, white background) for `steps` steps; return outputs/<name>."""
    from internal.cli import GSCLI
    from internal.demo_scene import generate_demo_scene

    root = Path(root)
    data = root / "data"
    if not (data / "blender").is_dir():
        generate_demo_scene(data, width=size, height=size, n_views=10, ss=1, n_points=500, formats=("blender",))
    args = [
        "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
        "--data.path", str(data / "blender"), "-n", name, "--output", str(root / "outputs"),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--save_steps", f"[{steps}]",
        "--checkpoint_every", str(steps), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.params.blender.random_points", "3000",
        "--model.save_renders", "false", *extra,
    ]
    cwd = os.getcwd()
    os.chdir(REPO)  # config paths are relative to the repository
    try:
        cli = GSCLI(args=args, run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        os.chdir(cwd)
    return root / "outputs" / name
