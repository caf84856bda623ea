"""Benchmark: 2 training processes against 1 on the same machine, one thread each, same images seen.

    .venv/bin/python bench/ddp.py                       # 3 pairs of runs, 1200 images each
    .venv/bin/python bench/ddp.py --repeats 1 --images 400   # quicker

Each run is a real `python main.py fit` on the generated demo scene (--trainer configs/ddp.yaml
--trainer.accelerator cpu --trainer.devices 2 for two processes) with OMP_NUM_THREADS=1, so each
process computes on one core. The two-process run does half the steps (each step trains on 2
images) with every step-counted schedule halved (densification window and interval, opacity reset,
position learning-rate decay, SH degree interval), as the README recommends, so both runs see the
same images in the same schedule; Adam is scaled for 2-image steps by GaussianDDPStrategy's default
lr_scaling "sqrt" (--lr-scaling none to compare). Runs alternate 1, 2, 1, 2, ... so that load from
other jobs on the machine falls on both.

Reported per run: images per second between the end of the warm-up steps (first --warmup fraction)
and the last training step, timed on rank 0 by the `Clock` callback (start-up, data decoding of the
first epoch, validation and shutdown excluded), the final Gaussian count, the validation PSNR at the
last step, rank 0's CPU time per step and the 1-minute load average. Then the medians, the ratio of
median images/s (target >= 1.7), the PSNR gap (target within 0.5 dB), and a CPU-time projection
(processes / CPU seconds per step: what an otherwise idle machine would give, communication waits
aside), which is not the target but shows how much of a shortfall is other jobs' load. Exits 1 when
a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning

REPO = Path(__file__).resolve().parents[1]


class Clock(lightning.Callback):
    """Rank 0 writes the wall-clock time of every training step's end (and the thread count) to `path`."""

    def __init__(self, path: str):
        self.path = path
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.counts.append(pl_module.gaussians.num_gaussians)

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({
                "world": trainer.world_size, "threads": torch.get_num_threads(), "times": self.times,
                "cpu": self.cpu, "counts": self.counts}))


def scene(root: Path, width: int, views: int) -> Path:
    path = root / f"scene_{width}_{views}"
    if not (path / "blender" / "transforms_train.json").is_file():
        sys.path.insert(0, str(REPO))
        from internal.demo_scene import generate_demo_scene

        generate_demo_scene(path, width=width, height=width, n_views=views, ss=1, formats=("blender",))
    return path / "blender"


def run(data: Path, out: Path, name: str, world: int, a) -> dict:
    steps = a.images // world
    s = lambda images: str(max(1, images // world))  # noqa: E731  schedule in images -> steps
    clock = out / f"{name}.json"
    args = [
        sys.executable, "main.py", "fit", "--config", "configs/blender.yaml", "--config", "configs/demo.yaml",
        "--data.path", str(data), "-n", name, "--output", str(out),
        "--data.params.blender.random_points", str(a.points),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--save_steps", "[]",
        "--checkpoint_every", str(10 * steps), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--model.save_renders", "false",
        "--model.density.init_args.densify_from", s(a.images // 12),
        "--model.density.init_args.densify_every", s(a.images // 12),
        "--model.density.init_args.densify_until", s(a.images * 3 // 4),
        "--model.density.init_args.opacity_reset_every", s(a.images // 3),
        "--model.optimization.means_lr_max_steps", str(steps),
        "--model.optimization.sh_degree_interval", s(a.images // 2),
        "--trainer.callbacks+=bench.ddp.Clock", "--trainer.callbacks.path", str(clock),
    ]
    if world > 1:
        args += ["--trainer", "configs/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", str(world),
                 "--trainer.strategy.init_args.lr_scaling", a.lr_scaling]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = os.getloadavg()[0]  # the 1-minute load average at the end of the run (other jobs + this one)
    if r.returncode != 0:
        raise SystemExit(f"run {name} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    c = json.loads(clock.read_text())
    assert c["world"] == world and c["threads"] == 1, c
    t = c["times"]
    k = max(1, int(a.warmup * len(t)))
    ips = world * (len(t) - k) / (t[-1] - t[k - 1])
    # CPU seconds rank 0 spent per step over the same steps (each process does the same work): a
    # projection of images/s for an otherwise idle machine, world / cpu_per_step, that other jobs'
    # load affects much less than wall time (waits for the other rank are not CPU time).
    cpu = (c["cpu"][-1] - c["cpu"][k - 1]) / (len(t) - k)
    rows = list(csv.DictReader(open(out / name / "metrics" / f"val-step={steps}.csv")))
    psnr = float(rows[-1]["psnr"])
    return {"name": name, "world": world, "steps": steps, "images_per_s": ips, "psnr": psnr,
            "gaussians": c["counts"][-1], "wall_s": wall, "cpu_ms_per_step": 1e3 * cpu,
            "cpu_images_per_s": world / cpu, "load": load}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1200, help="training images seen by each run (steps x processes)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs (1 process, 2 processes)")
    p.add_argument("--width", type=int, default=200, help="square image size of the demo scene")
    p.add_argument("--views", type=int, default=48, help="views of the demo scene (every 8th held out)")
    p.add_argument("--points", type=int, default=20000, help="random initial points")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps left out of the timing")
    p.add_argument("--lr-scaling", default="sqrt", choices=["sqrt", "none"],
                   help="GaussianDDPStrategy's Adam scaling for the 2-image steps")
    p.add_argument("--only", type=int, choices=[1, 2], help="run only this number of processes (no ratio)")
    p.add_argument("--dir", type=Path, default=REPO / "bench" / "results" / "ddp")
    a = p.parse_args()
    if a.images % 2:
        raise SystemExit("--images must be even (the 2-process run does images/2 steps)")
    a.dir.mkdir(parents=True, exist_ok=True)
    data = scene(a.dir, a.width, a.views)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {1: [], 2: []}
    for i in range(a.repeats):
        for world in ((a.only,) if a.only else (1, 2)):
            r = run(data, a.dir / stamp, f"w{world}_{i}", world, a)
            results[world].append(r)
            print(f"{r['name']}: {world} process(es), {r['steps']} steps, {r['images_per_s']:.2f} images/s, "
                  f"PSNR {r['psnr']:.2f} dB, {r['gaussians']} Gaussians, wall {r['wall_s']:.0f} s, "
                  f"{r['cpu_ms_per_step']:.1f} CPU ms/step/process (idle-machine projection "
                  f"{r['cpu_images_per_s']:.1f} images/s), load {r['load']:.1f}", flush=True)
    if a.only:
        return
    ips = {w: statistics.median(r["images_per_s"] for r in results[w]) for w in (1, 2)}
    psnr = {w: statistics.median(r["psnr"] for r in results[w]) for w in (1, 2)}
    ratio = ips[2] / ips[1]
    cpu_ips = {w: statistics.median(r["cpu_images_per_s"] for r in results[w]) for w in (1, 2)}
    gap = psnr[2] - psnr[1]
    pair_ratios = [b["images_per_s"] / a_["images_per_s"] for a_, b in zip(results[1], results[2])]
    print(f"median images/s: 1 process {ips[1]:.2f}, 2 processes {ips[2]:.2f}: ratio {ratio:.2f}x "
          f"(per pair: {', '.join(f'{x:.2f}' for x in pair_ratios)}; target >= 1.7)")
    print(f"CPU-time projection for an idle machine: 1 process {cpu_ips[1]:.2f}, 2 processes {cpu_ips[2]:.2f} "
          f"images/s: {cpu_ips[2] / cpu_ips[1]:.2f}x (not the target measurement)")
    print(f"median PSNR after {a.images} images: 1 process {psnr[1]:.2f} dB, 2 processes {psnr[2]:.2f} dB: "
          f"{gap:+.2f} dB (target within 0.5)")
    ok = ratio >= 1.7 and abs(gap) <= 0.5
    print("OK" if ok else "TARGET MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
