"""End-to-end training on the embedded demo scene (small, CPU): the CLI, losses, metrics files,
checkpoints, resume, PLY export, NaN handling."""

import csv
from pathlib import Path

import lightning
import pytest
import torch

import internal as gs
from internal.cli import GSCLI
from internal.demo_scene import generate_demo_scene
from internal.errors import ConfigError
from internal.module import NonFiniteLossError

STEPS_PER_EPOCH = 21  # 24 views, every 8th held out


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    # LightningCLI warns when both sys.argv (pytest's) and args are given.
    monkeypatch.setattr("sys.argv", ["main.py"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_demo_scene(root, width=96, height=96, n_views=24, ss=1, n_points=1500, formats=("blender", "colmap"))
    return root


def make_cli(demo, out, name, steps, *extra):
    args = [
        "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
        "--data.path", str(demo / "blender"), "-n", name, "--output", str(out),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--save_steps", f"[{steps}]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.params.blender.random_points", "4000",
        "--model.density.init_args.densify_from", "30", "--model.density.init_args.densify_every", "30",
        "--model.density.init_args.densify_until", "150", "--model.density.init_args.opacity_reset_every", "90",
        *extra,
    ]
    repo = Path(__file__).resolve().parents[1]
    import os

    cwd = os.getcwd()
    os.chdir(repo)  # config paths are relative to the repository
    try:
        return GSCLI(args=args, run=False)
    finally:
        os.chdir(cwd)


class Recorder(lightning.Callback):
    def __init__(self):
        self.losses, self.counts = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))
        self.counts.append(pl_module.gaussians.num_gaussians)


def fit(cli, ckpt_path=None):
    rec = Recorder()
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return rec


def read_mean(csv_path):
    rows = list(csv.DictReader(open(csv_path)))
    assert rows[-1]["image"] == "MEAN"
    return rows, {k: float(v) for k, v in rows[-1].items() if k != "image" and v}


def test_fit_trains_densifies_and_writes_the_experiment_folder(demo, tmp_path):
    steps = 600
    cli = make_cli(demo, tmp_path, "run", steps, "--model.density.init_args.densify_until", "450",
                   "--model.density.init_args.opacity_reset_every", "300")
    rec = fit(cli)
    exp = tmp_path / "run"
    # The loss falls and the Gaussians were densified and pruned on schedule.
    first, last = sum(rec.losses[:20]) / 20, sum(rec.losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)
    assert len(set(rec.counts)) > 3
    # Validation ran at the last step and wrote metrics with a MEAN row. The bar: this 600-step fit of
    # the 96 px scene measured 21.4 dB (SSIM 0.91); untrained it is ~10 dB, 200 steps give ~16.7 dB.
    rows, mean = read_mean(exp / "metrics" / f"val-step={steps}.csv")
    assert len(rows) == 1 + 3 and set(rows[0]) == {"image", "psnr", "ssim"}
    assert mean["psnr"] > 19.0, mean
    assert 0 < mean["ssim"] <= 1
    renders = sorted((exp / "renders" / f"val-step={steps}").glob("*.png"))
    assert len(renders) == 6  # render + ground truth per image
    for f in ("config.yaml", "cameras.json", "checkpoints/last.ckpt", f"checkpoints/step={steps}.ckpt"):
        assert (exp / f).is_file(), f
    assert not list(exp.rglob("*.tmp"))
    # The exported PLY reloads with the public API and holds the trained Gaussians.
    splats = gs.load_from_ply(exp / "point_cloud" / f"iteration_{steps}" / "point_cloud.ply")
    model = cli.model.gaussians
    assert len(splats) == model.num_gaussians
    torch.testing.assert_close(splats.means, model.means.detach())
    torch.testing.assert_close(splats.shN, model.shN.detach())


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_training_state(straight, resumed):
    """Two fitted CLIs hold bit-identical module state, Adam state, step and generator state."""
    s1, s2 = _state(straight.model), _state(resumed.model)
    assert s1.keys() == s2.keys()
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=0, msg=k)
    o1, o2 = straight.trainer.optimizers[0].state_dict(), resumed.trainer.optimizers[0].state_dict()
    for pid, st in o1["state"].items():
        for name, t in st.items():
            torch.testing.assert_close(o2["state"][pid][name], t, rtol=0, atol=0)
    assert straight.trainer.global_step == resumed.trainer.global_step
    assert torch.equal(straight.model.generator.get_state(), resumed.model.generator.get_state())


def test_resume_gives_the_same_state_as_not_stopping(demo, tmp_path):
    # Stop at an epoch boundary (the data order is a per-epoch permutation), after densification and an
    # opacity reset, and continue: parameters, optimizer moments, density statistics, SH degree and RNG
    # state must equal those of an uninterrupted run.
    a, b = 2 * STEPS_PER_EPOCH * 2, 5 * STEPS_PER_EPOCH  # 84, 105
    straight = make_cli(demo, tmp_path, "straight", b, "--checkpoint_every", str(a))
    fit(straight)
    first = make_cli(demo, tmp_path, "resumed", a, "--checkpoint_every", str(a))
    fit(first)
    second = make_cli(demo, tmp_path, "resumed", b, "--checkpoint_every", str(a))
    fit(second, ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert_same_training_state(straight, second)
    assert second.trainer.global_step == b


class PoisonAt(lightning.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.gaussians.sh0.fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(demo, tmp_path):
    cli = make_cli(demo, tmp_path, "nan", 60, "--checkpoint_every", "20")
    cli.trainer.callbacks.append(PoisonAt(30))
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 30.*last good checkpoint"):
        cli.trainer.fit(cli.model, cli.datamodule)
    ckpt = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    assert all(torch.isfinite(v).all() for k, v in ckpt["state_dict"].items() if v.is_floating_point())


def test_test_subcommand_and_colmap_scene(demo, tmp_path):
    # The COLMAP export of the same scene trains through the same CLI (black background, SfM points).
    cli = GSCLI(args=[
        "--config", str(Path(__file__).resolve().parents[1] / "configs" / "colmap.yaml"),
        "--data.path", str(demo / "colmap"), "-n", "col", "--output", str(tmp_path),
        "--trainer.max_steps", "40", "--trainer.val_check_interval", "40", "--save_steps", "[40]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ], run=False)
    fit(cli)
    assert cli.datamodule.scene.kind == "colmap"
    assert (tmp_path / "col" / "metrics" / "val-step=40.csv").is_file()
    fit_config = (tmp_path / "col" / "config.yaml").read_bytes()
    GSCLI(args=["test", "--config", str(tmp_path / "col" / "config.yaml"), "--ckpt_path", "last",
                "--trainer.enable_progress_bar", "false"])
    rows, mean = read_mean(tmp_path / "col" / "metrics" / "test-step=40.csv")
    assert len(rows) == 4 and mean["psnr"] > 8
    # `test` keeps its own config (it has options fit refuses, e.g. verbose); config.yaml stays fit's.
    assert (tmp_path / "col" / "config.yaml").read_bytes() == fit_config
    assert "verbose:" in (tmp_path / "col" / "config_test.yaml").read_text()


def test_ckpt_path_last_without_a_checkpoint_is_an_error_for_test(demo, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        GSCLI(args=["test", "--data.path", str(demo / "blender"), "-n", "none", "--output", str(tmp_path),
                    "--ckpt_path", "last"])


def test_bad_data_path_ends_the_cli_with_one_line_and_no_traceback(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "main.py", "fit", "--data.path", str(tmp_path / "nowhere"), "-n", "x",
                        "--output", str(tmp_path)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'nowhere'}: does not exist" in r.stderr


def test_resolution_schedule_factors_and_block_means():
    from internal.data.cameras import Cameras
    from internal.module import OptimizationParams, _block_all, block_mean

    o = OptimizationParams(num_downscales=2, resolution_schedule=100)
    assert [o.downscale_factor(s) for s in (0, 99, 100, 199, 200, 5000)] == [4, 4, 2, 2, 1, 1]
    assert OptimizationParams().downscale_factor(0) == 1  # off by default: the 3DGS recipe is unchanged
    r = OptimizationParams(num_downscales=1, resolution_schedule=100, downscale_random_init_only=True)
    assert [r.downscale_factor(s, random_init=True) for s in (0, 99, 100)] == [2, 2, 1]
    assert [r.downscale_factor(s, random_init=False) for s in (0, 99, 100)] == [1, 1, 1]  # an SfM start: full size
    img = torch.arange(7 * 5 * 3, dtype=torch.float32).reshape(7, 5, 3)
    small = block_mean(img, 2)  # the top-left 6x4 pixels in 2x2 blocks, as Cameras.scaled assumes
    assert small.shape == (3, 2, 3)
    torch.testing.assert_close(small[1, 1], img[2:4, 2:4].reshape(-1, 3).mean(0))
    cam = Cameras.from_numpy(torch.eye(3)[None], torch.zeros(1, 3), [50.0], [50.0], [2.5], [3.5], [5], [7])
    assert (int(cam.scaled(2).width), int(cam.scaled(2).height)) == small.shape[1::-1]
    mask = torch.ones(7, 5, dtype=torch.bool)
    mask[0, 0] = False
    m = _block_all(mask, 2)
    assert m.shape == (3, 2) and not m[0, 0] and m.sum() == 5  # a block is used only if all its pixels are
    assert _block_all(None, 2) is None
    with pytest.raises(ConfigError, match="num_downscales"):
        OptimizationParams(num_downscales=5)


def test_fit_with_a_resolution_schedule_trains_at_low_resolution_first(demo, tmp_path):
    steps = 90
    # (random_init_only: the Blender scene starts from random points, so the schedule applies)
    cli = make_cli(demo, tmp_path, "ds", steps, "--model.optimization.num_downscales", "1",
                   "--model.optimization.resolution_schedule", "45",
                   "--model.optimization.downscale_random_init_only", "true")
    widths, render = [], cli.model.renderer.forward

    def recording(gaussians, cameras, *args, **kwargs):
        widths.append(int(cameras.width[0]))
        return render(gaussians, cameras, *args, **kwargs)

    cli.model.renderer.forward = recording
    rec = fit(cli)
    assert widths[:45] == [48] * 45 and widths[45:90] == [96] * 45  # half size, then full size
    assert set(widths[90:]) == {96}  # validation: full size
    first, last = sum(rec.losses[:10]) / 10, sum(rec.losses[-10:]) / 10
    assert last < first, (first, last)
    rows, mean = read_mean(tmp_path / "ds" / "metrics" / f"val-step={steps}.csv")
    assert len(rows) == 1 + 3 and mean["psnr"] > 0
    render = sorted((tmp_path / "ds" / "renders" / f"val-step={steps}").glob("*_render.png"))[0]
    from PIL import Image

    assert Image.open(render).size == (96, 96)  # evaluated at full size


def test_fit_with_mcmc_keeps_the_budget_and_resumes_bit_exactly(demo, tmp_path):
    # configs/cpu_mcmc.yaml's strategy on the demo scene: random start below the cap, growth to it, relocation
    # of the dead, noise every step; stopping and resuming gives the uninterrupted run's state.
    mcmc = ["--model.density", "internal.density.MCMCDensityController", "--model.density.init_args.cap_max", "2000",
            "--model.density.init_args.refine_from", "20", "--model.density.init_args.refine_until", "100",
            "--model.density.init_args.refine_every", "10", "--data.params.blender.random_points", "1500"]
    a, b = 2 * STEPS_PER_EPOCH, 5 * STEPS_PER_EPOCH  # 42, 105
    straight = make_cli(demo, tmp_path, "straight", b, "--checkpoint_every", str(a), *mcmc)
    assert type(straight.model.density).__name__ == "MCMCDensityController"
    rec = fit(straight)
    assert rec.counts[0] == 1500 and max(rec.counts) == rec.counts[-1] == 2000  # grew to the cap, never past it
    first, last = sum(rec.losses[:10]) / 10, sum(rec.losses[-10:]) / 10
    assert last < first, (first, last)
    part = make_cli(demo, tmp_path, "resumed", a, "--checkpoint_every", str(a), *mcmc)
    fit(part)
    rest = make_cli(demo, tmp_path, "resumed", b, "--checkpoint_every", str(a), *mcmc)
    fit(rest, ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert_same_training_state(straight, rest)
