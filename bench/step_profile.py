"""Where a training step's time goes on the CPU: torch.profiler over real training steps, resumed from a
checkpoint of a real run (so the Gaussian count, SH degree and image size are a real run's), ops sorted
by self CPU time.

    .venv/bin/python bench/step_profile.py outputs/bench-lego400-7000            # 112k Gaussians, 400 px
    .venv/bin/python bench/step_profile.py EXP --warmup 5 --steps 30 --ckpt step=7000.ckpt

EXP is an experiment folder written by main.py fit (config.yaml + checkpoints/). The run goes through
`main.py fit` (the real training step, data module and optimizer) into a scratch folder, resumes from the
checkpoint, skips --warmup steps (first images decoded, allocator warm) and profiles the next --steps. It
prints the mean wall time per step and the table; --trace also writes a Chrome trace (open in
chrome://tracing or https://ui.perfetto.dev). Run it alone: other jobs on the machine inflate every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning  # noqa: E402
import torch  # noqa: E402


class ProfileSteps(lightning.Callback):
    """Profiles training steps warmup+1 .. warmup+steps of this run and prints the result."""

    def __init__(self, warmup: int = 5, steps: int = 20, rows: int = 30, trace: str = ""):
        self.warmup, self.steps, self.rows, self.trace = warmup, steps, rows, trace
        self.seen = 0
        self.prof = None
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.prof is None or self.seen != self.warmup + self.steps:
            return
        wall = (time.perf_counter() - self.t0) / self.steps
        self.prof.__exit__(None, None, None)
        n = pl_module.gaussians.num_gaussians
        h, w = batch.image.shape[:2]
        print(f"\n{self.steps} steps after {self.warmup} warm-up: {1000 * wall:.1f} ms/step wall (profiler on), "
              f"{n} Gaussians, SH degree {int(pl_module.gaussians.active_sh_degree)}, {w}x{h} px, "
              f"{torch.get_num_threads()} threads")
        print(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.rows))
        if self.trace:
            self.prof.export_chrome_trace(self.trace)
            print(f"trace: {self.trace}")
        trainer.should_stop = True


def resume_fit(exp: Path, ckpt_name: str, steps_after: int, callback: str, callback_args: dict, extra: list[str]) -> None:
    """Resume EXP's checkpoint through `main.py fit` into a scratch folder for `steps_after` more steps, with
    `callback` (a dotted class path) added; no validation, checkpoints or logs. Shared by the step benchmarks."""
    ckpt = exp / "checkpoints" / ckpt_name
    if not (exp / "config.yaml").is_file() or not ckpt.is_file():
        sys.exit(f"error: {exp} needs config.yaml and checkpoints/{ckpt_name} (an experiment folder of main.py fit)")
    step = int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])

    from internal.cli import main as cli_main

    with tempfile.TemporaryDirectory() as scratch:
        cli_main([
            "fit", "--config", str(exp / "config.yaml"), "--ckpt_path", str(ckpt), "--output", scratch, "-n", "profile",
            "--trainer.max_steps", str(step + steps_after), "--trainer.limit_val_batches", "0",
            "--save_steps", "[]", "--checkpoint_every", str(10**9), "--trainer.logger", "false",  # none (0 is refused)
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            f"--trainer.callbacks+={callback}",
        ] + sum(([f"--trainer.callbacks.{k}", str(v)] for k, v in callback_args.items()), []) + extra)


def resume_parser(doc: str, warmup: int, steps: int) -> argparse.ArgumentParser:
    """The arguments every step benchmark takes: EXP, --ckpt, --warmup, --steps (anything unknown goes to main.py fit)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--ckpt", default="last.ckpt", help="checkpoint file name in EXP/checkpoints")
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--steps", type=int, default=steps)
    return ap


def main() -> None:
    ap = resume_parser(__doc__, warmup=5, steps=20)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--trace", default="", help="write a Chrome trace to this path")
    args, extra = ap.parse_known_args()  # anything else is passed on to main.py fit
    resume_fit(args.experiment, args.ckpt, args.warmup + args.steps + 1, "bench.step_profile.ProfileSteps",
               dict(warmup=args.warmup, steps=args.steps, rows=args.rows, trace=args.trace), extra)


if __name__ == "__main__":
    main()
