"""Bad input to main.py ends with one line naming the thing and the fix, exit status 1, no traceback
(issue 9): files that are not checkpoints of ours, checkpoints with NaN Gaussians, impossible option
values, unknown options (with the closest known one suggested), negative step counts. And Lightning's
advertisements for its cloud services stay out of our runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from internal.cli import main
from internal.demo_scene import generate_demo_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.chdir(REPO)  # config paths are relative to the repository


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 10-step run on a tiny demo scene: (data folder, experiment folder)."""
    root = tmp_path_factory.mktemp("cli")
    generate_demo_scene(root / "data", width=48, height=48, n_views=10, ss=1, n_points=300, formats=("blender",))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        main(["fit", "--config", "configs/blender.yaml", "--data.path", str(root / "data" / "blender"), "-n", "run",
              "--output", str(root / "out"), "--trainer.max_steps", "10", "--trainer.val_check_interval", "10",
              "--save_steps", "[10]", "--data.params.blender.random_points", "500",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    finally:
        os.chdir(cwd)
    return root / "data" / "blender", root / "out" / "run"


def one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


def test_a_file_that_is_not_a_checkpoint(trained, tmp_path, capsys):
    _, exp = trained
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello, not a checkpoint\n")
    msg = one_line_error(capsys, ["test", "--config", str(exp / "config.yaml"), "--ckpt_path", str(bad)])
    assert str(bad) in msg and "not a PyTorch checkpoint" in msg and "last.ckpt" in msg


def test_a_checkpoint_of_another_project(trained, tmp_path, capsys):
    _, exp = trained
    other = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}, "epoch": 3}, other)
    msg = one_line_error(capsys, ["fit", "--config", str(exp / "config.yaml"), "--ckpt_path", str(other)])
    assert str(other) in msg and "not one of this trainer" in msg


def test_a_checkpoint_with_nan_gaussians(trained, tmp_path, capsys):
    _, exp = trained
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"]["gaussians.opacities"][:5] = float("nan")
    nan = tmp_path / "nan.ckpt"
    torch.save(ckpt, nan)
    msg = one_line_error(capsys, ["test", "--config", str(exp / "config.yaml"), "--ckpt_path", str(nan)])
    assert "5 non-finite values" in msg and "gaussians.opacities" in msg and "earlier" in msg


def test_an_sh_degree_other_than_the_checkpoints(trained, capsys):
    _, exp = trained
    msg = one_line_error(capsys, ["test", "--config", str(exp / "config.yaml"), "--ckpt_path", "last",
                                  "--model.sh_degree", "1"])
    assert "holds SH degree 3" in msg and "--model.sh_degree 3" in msg


@pytest.mark.parametrize("option, value, words", [
    ("--model.sh_degree", "5", ["--model.sh_degree", "0..3", "got 5"]),
    ("--trainer.max_steps", "-5", ["max_steps", "-5"]),
    ("--save_steps", "[-3]", ["--save_steps", "positive"]),
    ("--checkpoint_every", "0", ["--checkpoint_every", "> 0"]),
    ("--model.optimization.ssim_weight", "2", ["ssim_weight", "[0,1]"]),
    ("--model.density.init_args.densify_every", "0", ["densify_every", "> 0"]),
    ("--model.renderer.init_args.backend", "vulkan", ["backend", "vulkan", "cpu"]),
    ("--model.no_such_option", "3", ["unrecognized", "--model.no_such_option", "--help"]),
    ("--model.sh_degrees", "3", ["--model.sh_degrees", "did you mean --model.sh_degree"]),
    ("--trainer.max_steps", "many", ["max_steps", "int", "many"]),
])
def test_impossible_or_unknown_options(trained, capsys, option, value, words):
    data, _ = trained
    msg = one_line_error(capsys, ["fit", "--data.path", str(data), "-n", "x", "--output", "/nonexistent-dir-never-made",
                                  option, value])
    assert all(w in msg for w in words), msg


def test_an_unknown_key_in_a_config_file(trained, tmp_path, capsys):
    data, _ = trained
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("model:\n  sh_degre: 2\n")
    msg = one_line_error(capsys, ["fit", "--config", str(cfg), "--data.path", str(data), "-n", "x"])
    assert "model.sh_degre" in msg and "did you mean --model.sh_degree" in msg


def test_through_the_real_script_no_traceback_and_no_advertisement(trained, tmp_path):
    data, exp = trained
    bad = tmp_path / "zero.ckpt"
    bad.write_bytes(b"\0" * 64)
    r = subprocess.run([sys.executable, "main.py", "test", "--config", str(exp / "config.yaml"), "--ckpt_path", str(bad)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"error: {bad}: not a PyTorch checkpoint" in r.stderr
    # A working run says nothing about litlogger/litmodels (Lightning 2.6 logs a tip for them on every run).
    r = subprocess.run([sys.executable, "main.py", "test", "--config", str(exp / "config.yaml"), "--ckpt_path", "last",
                        "--trainer.enable_progress_bar", "false"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "litlogger" not in r.stdout + r.stderr and "litmodels" not in r.stdout + r.stderr


def test_evaluating_without_a_checkpoint(trained, tmp_path, capsys):
    # Lightning would evaluate freshly initialised Gaussians; we use the run's last.ckpt, or refuse.
    data, exp = trained
    msg = one_line_error(capsys, ["test", "--data.path", str(data), "-n", "untrained", "--output", str(tmp_path)])
    assert "needs trained Gaussians" in msg and "--ckpt_path" in msg
    main(["test", "--config", str(exp / "config.yaml"), "--trainer.enable_progress_bar", "false"])
    assert f"no --ckpt_path given: using {exp / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out
    assert (exp / "metrics" / "test-step=10.csv").is_file()
