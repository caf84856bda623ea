"""Training speed, this tree against an older build side by side: whole runs (issue 15's goals) and the
per-step figure compared with OpenSplat.

    # once: the old tree and its own native build (any git revision), into outputs/speed-baseline/
    .venv/bin/python bench/speed.py --prepare d56f800
    # lego 400 px, 7k steps (blender.yaml + cpu_fast.yaml), 3 runs each side, alternating old / new
    .venv/bin/python bench/speed.py --steps 7000 --runs 3
    # the 30k-step goal (full 3DGS recipe)
    .venv/bin/python bench/speed.py --scene lego400-3dgs --steps 30000 --runs 1
    # per step before densification, 50k random points (OpenSplat's published setting; see OPENSPLAT)
    .venv/bin/python bench/speed.py --per-step

Whole runs go through each tree's own bench/quality.py (`main.py fit` then `main.py test`), so each side
is measured as its users run it. The old side runs the old sources with the old extension first on
PYTHONPATH, the new side this tree with the venv's extension; both use this venv's Python and torch and
2 threads. Printed per run: fit wall seconds (from quality.py), CPU seconds of the whole job (user+sys,
fit and test), held-out PSNR, final Gaussians; then medians and new/old ratios. A JSON record goes to
bench/results/speed.jsonl. Wall-clock goals need a quiet machine: `uptime` is printed before each run.

--per-step: per-step time from the difference of a 220-step and a 20-step run (start-up and the first
image decodes cancel), lego 400 px with 50k random initial points, full-size images, no densification yet,
as issue 15 measured OpenSplat 1.2.0's CPU mode (885 ms/step, 2 threads, 2-core Xeon; their build, not ours).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))
BASELINE = REPO / "outputs" / "speed-baseline"
OPENSPLAT_MS_PER_STEP = 885.0  # issue 15: OpenSplat 1.2.0 CPU mode, 2 threads, lego 400, 50k random points


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def prepare(rev: str) -> None:
    """The old tree (git archive of `rev`) in BASELINE/repo and its native build in BASELINE/site."""
    if BASELINE.exists():
        shutil.rmtree(BASELINE)
    (BASELINE / "repo").mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(BASELINE / "repo")], input=archive, check=True)
    print(f"[prepare] {rev} -> {BASELINE / 'repo'}; building its native extension (several minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--target",
                    str(BASELINE / "site"), str(BASELINE / "repo" / "submodules" / "cpu_rasterizer")],
                   cwd=REPO, check=True)
    (BASELINE / "REVISION").write_text(subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True,
                                                      capture_output=True, text=True).stdout)


def sides() -> dict:
    if not (BASELINE / "site" / "cpu_rasterizer").is_dir():
        sys.exit(f"error: no old build in {BASELINE}: run `bench/speed.py --prepare <revision>` first")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2", GS_SHARED_DATA=str(DATA))
    old_env = dict(env, PYTHONPATH=str(BASELINE / "site"))
    new_env = dict(env)
    new_env.pop("PYTHONPATH", None)
    rev = (BASELINE / "REVISION").read_text().strip() if (BASELINE / "REVISION").exists() else "?"
    return {"old": (BASELINE / "repo", old_env, rev[:9]), "new": (REPO, new_env, "this tree")}


def whole_run(side: str, i: int, args, extra: list[str]) -> dict:
    root, env, _ = sides()[side]
    out = REPO / "outputs" / "speed" / f"{side}-{i}"
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        rec_path = Path(tmp) / "rec.jsonl"
        cmd = [sys.executable, "bench/quality.py", args.scene, "--steps", str(args.steps), "--output", str(out),
               "--json", str(rec_path), "--checkpoint_every", str(args.steps)] + extra
        print(f"[{side} {i}] load {load_average()}: {' '.join(cmd)}", flush=True)
        c0, t0 = child_cpu(), time.time()
        subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
        rec = json.loads(rec_path.read_text().splitlines()[-1])
    rec.update(side=side, run=i, job_wall_s=round(time.time() - t0, 1), job_cpu_s=round(child_cpu() - c0, 1),
               load_after=load_average())
    print(f"[{side} {i}] fit {rec['fit_wall_s']} s wall, job {rec['job_cpu_s']} s CPU, {rec['split']} PSNR {rec['psnr']}, "
          f"{rec['gaussians']} Gaussians", flush=True)
    return rec


def fit_steps(side: str, steps: int, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `main.py fit` for `steps` steps, lego 400, 50k random points, no validation."""
    root, env, _ = sides()[side]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "main.py", "fit", "--config", "configs/blender.yaml", "--config", "configs/cpu_fast.yaml",
               "--data.path", str(DATA / "nerf_synthetic_lego_400"), "-n", "perstep", "--output", tmp,
               "--data.params.blender.random_points", "50000", "--trainer.max_steps", str(steps),
               "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--save_steps", "[]",
               "--checkpoint_every", "100000", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"] + extra
        if "num_downscales" in (root / "internal" / "module.py").read_text():
            # Full-size images from step 0, as OpenSplat's figure (cpu_fast.yaml's half-size start for random
            # initialisations would otherwise make these steps cheaper; the whole runs keep it).
            cmd += ["--model.optimization.num_downscales", "0"]
        c0, t0 = child_cpu(), time.perf_counter()
        subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0, child_cpu() - c0


def per_step(args, extra: list[str]) -> None:
    res = {"old": [], "new": []}
    for i in range(args.runs):
        for side in ("old", "new"):
            load = load_average()
            w20, c20 = fit_steps(side, 20, extra)
            w220, c220 = fit_steps(side, 220, extra)
            ms, cpu_ms = (w220 - w20) / 0.2, (c220 - c20) / 0.2
            res[side].append((ms, cpu_ms))
            print(f"[{side} {i}] load {load}: {ms:.1f} ms/step wall, {cpu_ms:.1f} ms/step CPU", flush=True)
    med = {s: (statistics.median(v[0] for v in r), statistics.median(v[1] for v in r)) for s, r in res.items()}
    for side, (ms, cpu_ms) in med.items():
        print(f"{side}: median {ms:.1f} ms/step wall ({cpu_ms:.1f} ms CPU); OpenSplat 1.2.0 {OPENSPLAT_MS_PER_STEP:.0f} "
              f"ms/step: {OPENSPLAT_MS_PER_STEP / ms:.1f}x")
    print(f"new/old: {med['new'][0] / med['old'][0]:.2f}x wall, {med['new'][1] / med['old'][1]:.2f}x CPU")
    write({"kind": "per_step", "medians": med, "runs": res, "opensplat_ms": OPENSPLAT_MS_PER_STEP})


def write(rec: dict) -> None:
    rec.update(date=time.strftime("%Y-%m-%d %H:%M"), load=load_average(), revision_old=sides()["old"][2])
    path = REPO / "bench" / "results" / "speed.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"-> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", metavar="REV", help="put the old tree at git revision REV and its build in " + str(BASELINE))
    ap.add_argument("--scene", default="lego400", help="a bench/quality.py scene (lego400, lego400-3dgs, ...)")
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["old", "new"], help="run one side only")
    ap.add_argument("--per-step", action="store_true", help="per-step time (220 - 20 steps), 50k random points")
    ap.add_argument("--verbose", action="store_true", help="show the training output")
    args, extra = ap.parse_known_args()  # anything else goes to main.py fit on both sides
    if args.prepare:
        prepare(args.prepare)
        return
    if args.per_step:
        per_step(args, extra)
        return
    order = [args.only] if args.only else ["old", "new"]
    recs = [whole_run(side, i, args, extra) for i in range(args.runs) for side in order]
    print(f"\n{args.scene}, {args.steps} steps, {args.runs} run(s) per side (old = {sides()['old'][2]}):")
    med = {}
    for side in order:
        mine = [r for r in recs if r["side"] == side]
        med[side] = {k: statistics.median(r[k] for r in mine) for k in ("fit_wall_s", "job_cpu_s", "psnr", "gaussians")}
        m = med[side]
        print(f"  {side}: fit {m['fit_wall_s']:.0f} s = {m['fit_wall_s'] / 60:.1f} min wall (median), job CPU "
              f"{m['job_cpu_s']:.0f} s, PSNR {m['psnr']:.3f} dB, {m['gaussians']:.0f} Gaussians")
    if len(order) == 2:
        print(f"  new/old: fit wall {med['new']['fit_wall_s'] / med['old']['fit_wall_s']:.2f}x, "
              f"CPU {med['new']['job_cpu_s'] / med['old']['job_cpu_s']:.2f}x, "
              f"PSNR {med['new']['psnr'] - med['old']['psnr']:+.3f} dB")
    write({"kind": "whole", "scene": args.scene, "steps": args.steps, "medians": med, "runs": recs})


if __name__ == "__main__":
    main()
