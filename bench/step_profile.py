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

--accounting replaces the profiler with CPU-time accounting that other jobs on the machine do not
distort: every aten op (forward and backward: a TorchDispatchMode) and every call into the native
rasterizer is charged the CPU time of the main thread (time.thread_time) and of the whole process
(time.process_time) it took, by phase of the step (data, forward, backward, density, optimizer, rest).
The main thread takes part in every parallel region, so its CPU time is about what the step would take
on an idle machine (a lower bound: waiting at a barrier is not CPU time), and process / main thread
says how many cores an op keeps busy: 1.0 is serial, torch.get_num_threads() is perfectly parallel.

--python runs cProfile on the main thread instead (Python functions and native calls by own and cumulative
time: how much of the step is Lightning's loop, logging, our Python and the autograd engine).

--ab LEVER measures one speed lever side by side in the same run: after the warm-up, steps alternate
old / new / new / old ... (the lever off, then on), each step's wall time and main-thread CPU time are
recorded, and the medians of each side and their new/old ratio are printed. Levers: see LEVERS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
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


class PythonProfile(lightning.Callback):
    """cProfile of the main thread over steps warmup+1 .. warmup+steps: where the Python time between the ops
    goes (Lightning's loop and hooks, logging, the autograd engine's Python side). Sorted by own time."""

    def __init__(self, warmup: int = 5, steps: int = 20, rows: int = 30):
        self.warmup, self.steps, self.rows = warmup, steps, rows
        self.seen = 0
        self.prof = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup and self.prof is None:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.prof is None or self.seen != self.warmup + self.steps:
            return
        import pstats

        self.prof.disable()
        print(f"\ncProfile over {self.steps} steps (per-step ms = cumulative / {self.steps}):")
        st = pstats.Stats(self.prof)
        st.sort_stats("tottime").print_stats(self.rows)
        st.sort_stats("cumulative").print_stats(self.rows)
        trainer.should_stop = True


class CpuAccounting(lightning.Callback):
    """CPU time of the main thread and of the process per op and phase, over steps warmup+1 .. warmup+steps
    (see the module docstring). Ops called inside other ops' kernels are charged to the outer op."""

    PHASES = ("data", "forward", "backward", "density", "optimizer", "rest")

    def __init__(self, warmup: int = 5, steps: int = 20, rows: int = 30):
        self.warmup, self.steps, self.rows = warmup, steps, rows
        self.seen = 0
        self.active = False
        self.phase = "rest"
        self.ops = defaultdict(lambda: [0, 0, 0])  # (phase, op) -> [calls, main-thread ns, process ns]
        self.phase_cpu = defaultdict(lambda: [0, 0])  # phase -> [main-thread ns, process ns]
        self.mark = None
        self.mode = None
        self.native_saved = None
        self.t_wall = 0.0

    # -- phase boundaries
    def _switch(self, phase: str) -> None:
        now = (time.thread_time_ns(), time.process_time_ns())
        if self.active and self.mark is not None:
            acc = self.phase_cpu[self.phase]
            acc[0] += now[0] - self.mark[0]
            acc[1] += now[1] - self.mark[1]
        self.mark = now
        self.phase = phase

    def charge(self, name: str, t0: int, p0: int) -> None:
        if self.active:
            acc = self.ops[(self.phase, name)]
            acc[0] += 1
            acc[1] += time.thread_time_ns() - t0
            acc[2] += time.process_time_ns() - p0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup and not self.active:
            self._start(pl_module)
        self._switch("forward")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._switch("backward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._switch("density")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._switch("optimizer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._switch("rest")
        self.seen += 1
        if self.active and self.seen == self.warmup + self.steps:
            self._stop(trainer, pl_module, batch)
        else:
            self._switch("data")  # until the next batch arrives

    # -- instrumentation
    def _start(self, pl_module) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        acct = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                t0, p0 = time.thread_time_ns(), time.process_time_ns()
                out = func(*args, **(kwargs or {}))
                acct.charge(str(func.overloadpacket.__name__), t0, p0)
                return out

        from internal import loss
        from internal.rasterize import native

        def timed(inner):
            class Timed:
                def __getattr__(self, name):
                    fn = getattr(inner, name)
                    if not callable(fn):
                        return fn

                    def call(*a, **k):
                        t0, p0 = time.thread_time_ns(), time.process_time_ns()
                        try:
                            return fn(*a, **k)
                        finally:
                            acct.charge("native." + name, t0, p0)

                    return call

            return Timed()

        # the native modules as the rasterizer and the fused loss hold them, restored by _stop
        self.native_saved = [(owner, attr, getattr(owner, attr)) for owner, attr in ((native, "_C"), (loss, "_native"))
                             if getattr(owner, attr) is not None]
        for owner, attr, inner in self.native_saved:
            setattr(owner, attr, timed(inner))
        self.mode = Mode()
        self.mode.__enter__()
        self.active = True
        self.mark = None
        self.t_wall = time.perf_counter()

    def _stop(self, trainer, pl_module, batch) -> None:
        wall = (time.perf_counter() - self.t_wall) / self.steps
        self.mode.__exit__(None, None, None)
        self.active = False
        for owner, attr, inner in self.native_saved or []:
            setattr(owner, attr, inner)
        k = 1e-6 / self.steps  # ns -> ms per step
        n = pl_module.gaussians.num_gaussians
        h, w = batch.image.shape[:2]
        threads = torch.get_num_threads()
        main_ms = sum(v[0] for v in self.phase_cpu.values()) * k
        proc_ms = sum(v[1] for v in self.phase_cpu.values()) * k
        print(f"\n{self.steps} steps after {self.warmup} warm-up: {n} Gaussians, SH degree "
              f"{int(pl_module.gaussians.active_sh_degree)}, {w}x{h} px, {threads} threads")
        print(f"per step: main thread {main_ms:.1f} ms CPU (~ idle-machine wall), process {proc_ms:.1f} ms CPU, "
              f"{proc_ms / max(main_ms, 1e-9):.2f} cores busy on average ({1 - proc_ms / max(threads * main_ms, 1e-9):.0%} of "
              f"{threads} idle); wall {1000 * wall:.1f} ms (load-dependent, instrumented)")
        print(f"\n{'phase':<10} {'main ms':>8} {'proc ms':>8} {'cores':>6}")
        for ph in self.PHASES:
            m, p = self.phase_cpu.get(ph, [0, 0])
            print(f"{ph:<10} {m * k:8.2f} {p * k:8.2f} {p / max(m, 1):6.2f}")
        rows = sorted(self.ops.items(), key=lambda kv: -kv[1][1])[: self.rows]
        print(f"\n{'phase':<10} {'op':<36} {'calls':>6} {'main ms':>8} {'proc ms':>8} {'cores':>6}")
        for (ph, name), (calls, m, p) in rows:
            print(f"{ph:<10} {name[:36]:<36} {calls / self.steps:6.1f} {m * k:8.2f} {p * k:8.2f} {p / max(m, 1):6.2f}")
        serial = sum(v[1] for v in self.ops.values() if v[2] < 1.2 * v[1]) * k
        ops_main = sum(v[1] for v in self.ops.values()) * k
        print(f"\nops {ops_main:.1f} ms main-thread CPU per step, of which {serial:.1f} ms in ops using < 1.2 cores; "
              f"outside ops (Python, autograd engine, Lightning): {main_ms - ops_main:.1f} ms")
        trainer.should_stop = True


def _fused_loss(on: bool) -> None:
    import cpu_rasterizer

    from internal import loss

    loss._native = cpu_rasterizer._C if on else None


LEVERS = {
    "fused_loss": _fused_loss,  # internal/loss.py's native L1+SSIM (on) against metrics.l1 + metrics.ssim (off)
}


class AbSteps(lightning.Callback):
    """Steps warmup+1 .. warmup+steps alternate the lever off / on (ABBA order); prints per-side medians."""

    def __init__(self, lever: str = "fused_loss", warmup: int = 5, steps: int = 20):
        if lever not in LEVERS:
            raise ValueError(f"--ab: unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        self.lever, self.warmup, self.steps = lever, warmup, steps
        self.seen = 0
        self.side = None
        self.t = None
        self.times = {"old": [], "new": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        k = self.seen - self.warmup
        self.side = None if k < 0 else ("old", "new", "new", "old")[k % 4]
        LEVERS[self.lever](self.side != "old")
        self.t = (time.perf_counter(), time.thread_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.side is not None:
            self.times[self.side].append((time.perf_counter() - self.t[0], time.thread_time() - self.t[1]))
        self.seen += 1
        if self.seen < self.warmup + self.steps:
            return
        import statistics

        n = pl_module.gaussians.num_gaussians
        h, w = batch.image.shape[:2]
        print(f"\n--ab {self.lever}: {self.steps} steps after {self.warmup} warm-up, alternating; {n} Gaussians, "
              f"SH degree {int(pl_module.gaussians.active_sh_degree)}, {w}x{h} px, {torch.get_num_threads()} threads, "
              f"load {os.getloadavg()[0]:.2f}")
        med = {}
        for side, v in self.times.items():
            med[side] = (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
            print(f"  {side}: median {1000 * med[side][0]:.1f} ms/step wall, {1000 * med[side][1]:.1f} ms main-thread CPU "
                  f"({len(v)} steps)")
        print(f"  new/old: {med['new'][0] / med['old'][0]:.3f}x wall, {med['new'][1] / med['old'][1]:.3f}x main-thread CPU")
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
    ap.add_argument("--ab", metavar="LEVER", default="", help=f"time a lever off/on side by side: {', '.join(LEVERS)}")
    ap.add_argument("--accounting", action="store_true",
                    help="CPU-time accounting per op and phase instead of the profiler (not distorted by load)")
    ap.add_argument("--python", action="store_true", help="cProfile of the main thread instead of the profiler")
    args, extra = ap.parse_known_args()  # anything else is passed on to main.py fit
    if args.ab:
        callback, cb_args = "bench.step_profile.AbSteps", dict(lever=args.ab, warmup=args.warmup, steps=args.steps)
    elif args.python:
        callback, cb_args = "bench.step_profile.PythonProfile", dict(warmup=args.warmup, steps=args.steps, rows=args.rows)
    elif args.accounting:
        callback, cb_args = "bench.step_profile.CpuAccounting", dict(warmup=args.warmup, steps=args.steps, rows=args.rows)
    else:
        callback, cb_args = "bench.step_profile.ProfileSteps", dict(warmup=args.warmup, steps=args.steps, rows=args.rows,
                                                                    trace=args.trace)
    resume_fit(args.experiment, args.ckpt, args.warmup + args.steps + 1, callback, cb_args, extra)


if __name__ == "__main__":
    main()
