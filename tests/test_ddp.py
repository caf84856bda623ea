"""Several processes (internal/ddp.py): real 2-process CPU runs (gloo) through Lightning's own launcher.

Lightning's "popen" launcher re-executes the script for every rank, so the training runs go through
`python main.py fit ... --trainer configs/ddp.yaml` in a subprocess. Each process gets one thread
(OMP_NUM_THREADS=1), as on a 2-core machine two processes should.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from internal import ddp
from internal.demo_scene import generate_demo_scene

from tests.ddp_probe import collectives_worker

REPO = Path(__file__).resolve().parents[1]
STEPS = 150
EPOCH_2 = 11  # 21 training views: ceil(21/2) steps per epoch under 2 processes
RESUME_AT = 7 * EPOCH_2  # 77: an epoch boundary, so the resumed data order is the uninterrupted one
DENSIFY = dict(densify_from=30, densify_every=30, densify_until=STEPS, opacity_reset_every=90)
# 3DGS iterations 60, 90, 120 densify (0-based steps 59, 89, 119); opacity resets at steps 29 (white
# background, iteration == densify_from) and 89; size pruning from iteration 91.
DENSIFY_STEPS = {59, 89, 119}
RESET_STEPS = {29, 89}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_ddp")
    generate_demo_scene(root, width=96, height=96, n_views=24, ss=1, n_points=1500, formats=("blender",))
    return root / "blender"


def read_mean(csv_path):
    rows = list(csv.DictReader(open(csv_path)))
    assert rows[-1]["image"] == "MEAN"
    return {k: float(v) for k, v in rows[-1].items() if k != "image" and v}


def fit_args(demo, out, name, steps, devices, *extra):
    args = [
        sys.executable, "main.py", "fit", "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
        "--data.path", str(demo), "-n", name, "--output", str(out),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.params.blender.random_points", "4000", "--checkpoint_every", "1000",
        *[a for k, v in DENSIFY.items() for a in (f"--model.density.init_args.{k}", str(v))],
        "--trainer.callbacks+=tests.ddp_probe.DumpState",
    ]
    if devices > 1:
        args += ["--trainer", "configs/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", str(devices)]
    return args + list(extra)


def run_fit(demo, out, name, steps, devices, *extra, expect_ok=True, timeout=300):
    args = fit_args(demo, out, name, steps, devices, *extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if expect_ok:
        assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def dumps(exp, world):
    return [torch.load(exp / "ddp_probe" / f"rank{r}.pt", weights_only=False) for r in range(world)]


def is_density_stat(key):
    return key.startswith("density.")  # per-process partial sums by design (summed at each decision)


def assert_bit_identical(a, b, n_states=6):
    """Model tensors, optimizer state (`n_states` parameter tensors with Adam state) and generator
    state of two dumps, bit for bit."""
    keys = [k for k in a["state_dict"] if not is_density_stat(k)]
    assert keys == [k for k in b["state_dict"] if not is_density_stat(k)]
    assert any(k.startswith("gaussians.") for k in keys)
    for k in keys:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    oa, ob = a["optimizer"], b["optimizer"]
    assert [g["lr"] for g in oa["param_groups"]] == [g["lr"] for g in ob["param_groups"]]
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) == n_states
    for pid, st in oa["state"].items():
        assert st.keys() == ob["state"][pid].keys() and {"exp_avg", "exp_avg_sq", "step"} <= set(st)
        for name, t in st.items():
            assert torch.equal(t, ob["state"][pid][name]), (pid, name)
    assert torch.equal(a["generator"], b["generator"])


@pytest.fixture(scope="module")
def ddp_run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_out")
    run_fit(demo, out, "two", STEPS, 2, "--save_steps", f"[{RESUME_AT},{STEPS}]")
    return out / "two"


def test_two_processes_densify_prune_reset_and_stay_bit_identical(ddp_run):
    r0, r1 = dumps(ddp_run, 2)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["global_step"] == r1["global_step"] == STEPS
    # Every Gaussian tensor, Adam moment and step, learning rate and the generator: bit for bit.
    assert_bit_identical(r0, r1)
    s0, s1 = r0["steps"], r1["steps"]
    assert [s["step"] for s in s0] == list(range(STEPS))
    # Same Gaussian count after every step; densification grew and pruned the model on schedule.
    assert [s["after"] for s in s0] == [s["after"] for s in s1]
    changed = {s["step"] for s in s0 if s["after"] != s["before"]}
    assert changed == DENSIFY_STEPS, changed
    assert sum(s.get("density/cloned", 0) + s.get("density/split", 0) for s in s0) > 0
    assert sum(s.get("density/pruned", 0) for s in s0) > 0
    assert s0[-1]["after"] != s0[0]["before"]
    # Opacity resets: every opacity at most 0.01, plus one Adam step of at most lr 0.05 on the logit.
    for step in RESET_STEPS:
        assert s0[step - 1]["max_opacity"] > 0.05 and s0[step]["max_opacity"] < 0.0106, step
    # Each process trains on a different image at every step; within an epoch the shares are disjoint
    # except for the one padding image (21 views over 2 processes).
    assert all(a["image"] != b["image"] for a, b in zip(s0, s1))
    for e in range(STEPS // EPOCH_2):
        seen0 = {s["image"] for s in s0[e * EPOCH_2:(e + 1) * EPOCH_2]}
        seen1 = {s["image"] for s in s1[e * EPOCH_2:(e + 1) * EPOCH_2]}
        assert len(seen0 | seen1) == 21 and len(seen0 & seen1) == 1
    # Communication: one flat all_reduce per step (gradients), one more at each densification (statistics)
    # and, when a checkpoint is built, two for its statistics (sum, max).
    for s in s0:
        expect = 1 + (s["step"] in DENSIFY_STEPS) + 2 * (s["step"] + 1 in (RESUME_AT, STEPS))
        assert s["reduces"] == expect, s
    # Checkpoints are written by rank 0 only.
    assert r1["saved"] == []
    assert {Path(p).name for p in r0["saved"]} == {f"step={RESUME_AT}.ckpt", f"step={STEPS}.ckpt"}
    # The run trains. Bar: untrained ~10 dB; this 150-step, 2-process run measured 16.3 dB
    # (one process, 150 steps: 15.9 dB).
    mean = read_mean(ddp_run / "metrics" / f"val-step={STEPS}.csv")
    assert mean["psnr"] > 14.5, mean
    # Adam follows the 2-image steps (lr_scaling "sqrt"): eps / sqrt(2), betas squared, lr x sqrt(2).
    assert_adam_for(r0, 2)


def test_two_processes_with_mcmc_relocate_grow_and_stay_bit_identical(demo, tmp_path):
    # The MCMC strategy draws relocations, growth and per-step noise from the shared training generator:
    # both processes must still hold the same Gaussians (and moments) after every step.
    mcmc = ["--model.density", "internal.density.MCMCDensityController", "--model.density.init_args.cap_max", "5000",
            "--model.density.init_args.refine_from", "20", "--model.density.init_args.refine_every", "20",
            "--model.density.init_args.refine_until", "100"]
    run_fit(demo, tmp_path, "mcmc", 84, 2, "--save_steps", "[84]", *mcmc)
    r0, r1 = dumps(tmp_path / "mcmc", 2)
    assert_bit_identical(r0, r1)
    s0, s1 = r0["steps"], r1["steps"]
    assert [s["after"] for s in s0] == [s["after"] for s in s1]
    assert {s["step"] for s in s0 if s["after"] != s["before"]} == {39, 59, 79}  # grew 5% at iterations 40, 60, 80
    assert s0[-1]["after"] == 4000 + 200 + 210 + 220  # + int(5% of N) each time, under the cap


def assert_adam_for(dump, n):
    for g in dump["optimizer"]["param_groups"]:
        assert g["images_per_step"] == n
        assert g["eps"] == pytest.approx(1e-15 / n ** 0.5, rel=1e-12)
        assert g["betas"] == pytest.approx((0.9 ** n, 0.999 ** n), rel=1e-12)
    groups = {g["name"]: g for g in dump["optimizer"]["param_groups"]}
    assert groups["opacities"]["lr"] == pytest.approx(0.05 * n ** 0.5, rel=1e-12)


def test_checkpoint_holds_the_statistics_of_all_processes(ddp_run):
    ckpt = torch.load(ddp_run / "checkpoints" / f"step={RESUME_AT}.ckpt", weights_only=False)
    assert ckpt["global_step"] == RESUME_AT
    count = ckpt["state_dict"]["density.count"]
    # The window restarted after the densification at step 59: steps 59..76 add 18 steps per process
    # (step 59's statistics were taken before its densification reset them, so 17 remain after it).
    per_process = RESUME_AT - 1 - 59
    assert count.max() > per_process and count.max() <= 2 * per_process, (float(count.max()), per_process)
    assert len(count) == ckpt["state_dict"]["gaussians.means"].shape[0]


def test_resume_ddp_checkpoint_under_ddp_and_one_process(demo, ddp_run, tmp_path):
    ckpt = ddp_run / "checkpoints" / f"step={RESUME_AT}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    straight = dumps(ddp_run, 2)[0]

    # Under 2 processes: the same end state as the uninterrupted run (the checkpoint is at an epoch end).
    run_fit(demo, tmp_path, "resumed2", STEPS, 2, "--ckpt_path", str(ckpt), "--save_steps", f"[{STEPS}]")
    r0, r1 = dumps(tmp_path / "resumed2", 2)
    for r in (r0, r1):
        assert r["start"]["global_step"] == RESUME_AT and r["global_step"] == STEPS
        assert torch.equal(r["start"]["means"], saved["gaussians.means"])
    # The saved statistics are totals: rank 0 takes them, rank 1 starts from zero.
    assert torch.equal(r0["start"]["density_count"], saved["density.count"])
    assert r1["start"]["density_count"].abs().sum() == 0
    assert_bit_identical(r0, r1)
    assert_bit_identical(r0, straight)

    # Under one process, from the same file.
    run_fit(demo, tmp_path, "resumed1", RESUME_AT + 30, 1, "--ckpt_path", str(ckpt), "--save_steps", "[]")
    (one,) = dumps(tmp_path / "resumed1", 1)
    assert one["start"]["global_step"] == RESUME_AT and one["global_step"] == RESUME_AT + 30
    assert torch.equal(one["start"]["means"], saved["gaussians.means"])
    assert torch.equal(one["start"]["density_count"], saved["density.count"])
    assert any(s["after"] != s["before"] for s in one["steps"])  # densified at step 89 (iteration 90)
    assert_adam_for(one, 1)  # the 2-process Adam settings of the checkpoint were scaled back


def test_one_process_checkpoint_resumes_under_ddp(demo, tmp_path):
    run_fit(demo, tmp_path, "single", 63, 1, "--save_steps", "[63]")
    ckpt = tmp_path / "single" / "checkpoints" / "step=63.ckpt"
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    run_fit(demo, tmp_path, "single", 95, 2, "--ckpt_path", str(ckpt), "--save_steps", "[95]")
    r0, r1 = dumps(tmp_path / "single", 2)
    for r in (r0, r1):
        assert r["start"]["global_step"] == 63 and r["global_step"] == 95
        assert torch.equal(r["start"]["means"], saved["gaussians.means"])
    assert_bit_identical(r0, r1)
    assert_adam_for(r0, 2)
    assert {s["step"] for s in r0["steps"] if s["after"] != s["before"]} == {89}
    assert (tmp_path / "single" / "checkpoints" / "step=95.ckpt").is_file()


def test_diverged_processes_fail_loudly(demo, tmp_path):
    r = run_fit(demo, tmp_path, "diverge", 70, 2, "--save_steps", "[]",
                "--trainer.callbacks+=tests.ddp_probe.Diverge", "--trainer.callbacks.step", "40", expect_ok=False)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "no longer hold the same Gaussian model (after densification at step 59)" in err, err[-4000:]
    assert "rank 1 differs from rank 0 in gaussians.opacities" in err


def test_a_nan_loss_on_one_process_stops_every_process(demo, tmp_path):
    """Rank 1's loss turns NaN at step 45: both processes learn it in the gradient all-reduce and stop
    with the error (no process is left waiting in a collective), and the last good checkpoint stays."""
    r = run_fit(demo, tmp_path, "nan", 70, 2, "--save_steps", "[]", "--checkpoint_every", "20",
                "--trainer.callbacks+=tests.ddp_probe.NanOnRank", "--trainer.callbacks.step", "45",
                expect_ok=False, timeout=240)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "error: the loss became nan at step 45 on 1 of 2 processes (image" in err, err[-4000:]
    assert "error: the loss became non-finite at step 45 on 1 of 2 processes (not on this process" in err, err[-4000:]
    assert "Timeout" not in err and "Connection closed by peer" not in err, err[-4000:]
    ckpt = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 40
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_two_nodes_through_lightnings_launcher(demo, tmp_path):
    """`--trainer.num_nodes 2`, as on two machines: here two commands on this machine, one process
    each, told apart by NODE_RANK and meeting at MASTER_ADDR:MASTER_PORT (Lightning's environment)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    steps = 95  # densifies at 59 and 89, resets opacity at 29 and 89
    args = fit_args(demo, tmp_path, "nodes", steps, 1, "--save_steps", "[]", "--trainer", "configs/ddp.yaml",
                    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2")
    procs = []
    for node in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), NODE_RANK=str(node))
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    r0, r1 = dumps(tmp_path / "nodes", 2)
    assert (r0["rank"], r1["rank"], r0["world_size"], r1["world_size"]) == (0, 1, 2, 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert_bit_identical(r0, r1)
    changed = {s["step"] for s in r0["steps"] if s["after"] != s["before"]}
    assert changed == {59, 89}, changed
    assert all(a["image"] != b["image"] for a, b in zip(r0["steps"], r1["steps"]))
    assert_adam_for(r0, 2)
    assert (tmp_path / "nodes" / "config.yaml").is_file()  # written by global rank 0


def test_a_wrapping_strategy_is_refused(demo, tmp_path):
    r = run_fit(demo, tmp_path, "plain", 2, 2, "--save_steps", "[]", "--trainer.strategy", "ddp", expect_ok=False)
    assert r.returncode != 0
    assert "cannot follow Gaussians whose number changes" in r.stdout + r.stderr


# ---------------------------------------------------------------------------- without Lightning

def test_collectives_average_sum_and_check(tmp_path):
    import torch.multiprocessing as mp

    port = 29500 + os.getpid() % 2000
    mp.spawn(collectives_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert a["order"][:6] == [f"gaussians.{n}" for n in ("means", "quats", "scales", "opacities", "sh0", "shN")]
    assert a["order"][6:] == ["mlp.weight", "mlp.bias", "unused.weight", "unused.bias"]  # frozen excluded
    # One flat all_reduce for all gradients (+1 flag per parameter, +1 loss flag), one for the statistics.
    assert len(a["grad_reduces"]) == 1 and len(a["stat_reduces"]) == 1
    # 7 Gaussians at SH degree 1: 21+28+21+7+21+63 values, the MLPs 8 and 6 (zeros where no gradient), 10 flags.
    # ... and the loss flag: both ranks learn that one of them had a non-finite loss.
    assert a["grad_reduces"] == [161 + 14 + 10 + 1]
    assert a["n_bad"] == b["n_bad"] == 1
    for name, ga in a["averaged"].items():
        gb = b["averaged"][name]
        la, lb = a["local"][name], b["local"][name]
        if la is None and lb is None:
            assert ga is None and gb is None, name  # no gradient anywhere: stays None (Adam skips it)
            continue
        assert torch.equal(ga, gb), name  # bit-identical on both ranks
        expect = ((la if la is not None else 0) + (lb if lb is not None else 0)) / 2
        torch.testing.assert_close(ga, expect, rtol=0, atol=1e-7, msg=name)
    assert a["local"]["gaussians.sh0"] is not None and b["local"]["gaussians.sh0"] is None
    for sa, sb, s0, s1 in zip(a["stats"], b["stats"], a["stats_before"], b["stats_before"]):
        assert torch.equal(sa, sb) and torch.equal(sa, s0 + s1)
    for c in (a["checks"], b["checks"]):
        assert c["same"] == "ok"
        assert c["differs"] and "test, one ulp" in c["differs"] and "rank 1 differs from rank 0 in gaussians.means" in c["differs"]


def test_bit_checksum_sees_every_bit_and_position():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3000, 3, generator=g)  # 9000 words: 8 full rows of 1024 and a tail
    base = ddp.bit_checksum(t)
    assert ddp.bit_checksum(t.clone()) == base
    for i in (0, 1023, 1024, 4567, 8191, 8192, 8999):  # first/last of rows, tail
        for bit in (0, 17, 30, 31):
            u = t.clone().reshape(-1)
            u.view(torch.int32)[i] ^= 1 << bit if bit < 31 else -(1 << 31)
            assert ddp.bit_checksum(u.view_as(t)) != base, (i, bit)
    swapped = t.clone().reshape(-1)
    swapped[[10, 5000]] = swapped[[5000, 10]]
    assert ddp.bit_checksum(swapped) != base  # same words, another order
    assert ddp.bit_checksum(t.flip(0)) != base
    assert ddp.bit_checksum(torch.zeros(5)) != ddp.bit_checksum(torch.zeros(6))
    assert ddp.bit_checksum(torch.tensor([0.0])) != ddp.bit_checksum(torch.tensor([-0.0]))  # equal values, other bits
    assert ddp.bit_checksum(torch.tensor([float("nan")])) == ddp.bit_checksum(torch.tensor([float("nan")]))
    for x in (torch.randn(7, dtype=torch.float64), torch.arange(5), torch.tensor([True, False]),
              torch.randn(9).half(), torch.randint(0, 255, (11,), dtype=torch.uint8)):
        y = x.clone()
        y.view(-1)[-1] = ~y.view(-1)[-1] if x.dtype == torch.bool else y.view(-1)[-1] + 1
        assert ddp.bit_checksum(x) == ddp.bit_checksum(x.clone()) != ddp.bit_checksum(y), x.dtype
    big = torch.randn(3 << 20, generator=g)
    assert ddp.bit_checksum(big) == ddp.bit_checksum(big.clone())


def test_adam_rescaling_is_relative_and_exact(monkeypatch):
    from types import SimpleNamespace

    from internal.gaussians import GaussianModel
    from internal.optim import create_optimizer

    opt = create_optimizer(GaussianModel(1), {n: 0.01 * (i + 1) for i, n in enumerate(GaussianModel.PARAM_NAMES)})
    before = [dict(g, params=None) for g in opt.param_groups]
    trainer = SimpleNamespace(strategy=ddp.GaussianDDPStrategy())
    for n in (4, 2, 1):
        monkeypatch.setattr(ddp, "world_size", lambda n=n: n)
        assert ddp.scale_optimizer_for_batch(trainer, opt) == n
        for g, b in zip(opt.param_groups, before):
            assert g["lr"] == pytest.approx(b["lr"] * n ** 0.5, rel=1e-12) and ddp.lr_factor(g) == pytest.approx(n ** 0.5)
            assert g["eps"] == pytest.approx(b["eps"] / n ** 0.5, rel=1e-12)
            assert g["betas"] == pytest.approx(tuple(x ** n for x in b["betas"]), rel=1e-12)
    monkeypatch.setattr(ddp, "world_size", lambda: 4)
    trainer.strategy.lr_scaling = "none"
    assert ddp.scale_optimizer_for_batch(trainer, opt) == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b["lr"] for b in before], rel=1e-12)


def test_config_builds_the_strategy_for_processes_and_nodes(monkeypatch):
    from lightning.pytorch.strategies import StrategyRegistry

    from internal.cli import GSCLI

    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.chdir(REPO)
    cli = GSCLI(args=["--data.path", "unused", "--trainer", "configs/ddp.yaml", "--trainer.accelerator", "cpu",
                      "--trainer.devices", "2", "--trainer.num_nodes", "3"], run=False)
    s = cli.trainer.strategy
    assert isinstance(s, ddp.GaussianDDPStrategy)
    assert (s.num_processes, s.num_nodes, cli.trainer.world_size) == (2, 3, 6)
    assert s._get_process_group_backend() == "gloo"
    assert ddp.STRATEGY_NAME in StrategyRegistry
    cuda = ddp.GaussianDDPStrategy(parallel_devices=[torch.device("cuda", 0)])
    assert cuda._get_process_group_backend() == "nccl"
    with pytest.raises(ValueError, match="popen"):
        ddp.GaussianDDPStrategy(start_method="spawn")
