"""A tiny trained output folder for the loading, viewer and browser tests (the embedded demo scene)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


_TRAINED: dict = {}  # one training per pytest session and settings, shared by the test modules


def tiny_run_fixture(steps: int = 60, size: int = 64):
    """A fixture giving a tiny trained output folder; trained once per pytest session (tests must not
    change it: copy files before damaging them)."""

    @pytest.fixture(scope="module")
    def run(tmp_path_factory):
        key = (steps, size)
        if key not in _TRAINED or not _TRAINED[key].is_dir():
            mp = pytest.MonkeyPatch()
            mp.setattr("sys.argv", ["main.py"])  # LightningCLI warns when both sys.argv and args are given
            try:
                _TRAINED[key] = train_tiny(tmp_path_factory.mktemp("tiny"), steps=steps, size=size)
            finally:
                mp.undo()
        return _TRAINED[key]

    return run


class GroupRenderer(torch.nn.Module):
    """A stand-in for an appearance renderer (CONTRACTS.md 3): group_names and cameras.appearance_id;
    group 1 ("evening") renders at half brightness."""

    group_names = ["morning", "evening"]

    def forward(self, gaussians, cameras, background, sh_degree=None):
        from internal.rasterize import rasterize

        self.seen = int(cameras.appearance_id[0])
        out = rasterize(gaussians.get_means(), gaussians.get_quats(), gaussians.get_scales(),
                        gaussians.get_opacities(), gaussians.get_sh(), cameras.viewmats(), cameras.Ks(),
                        int(cameras.width[0]), int(cameras.height[0]), sh_degree=sh_degree, backgrounds=background)
        out.colors = out.colors * (0.5 if self.seen == 1 else 1.0)
        return out


def with_groups(model):
    """`model` (a LoadedModel) as if its checkpoint had an appearance model with two groups."""
    model.renderer, model.appearance_groups = GroupRenderer(), list(GroupRenderer.group_names)
    return model
