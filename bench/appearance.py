"""The appearance model measured: quality on a varied-appearance scene, and the cost of a training step.

    .venv/bin/python bench/appearance.py quality [--steps 7000] [--groups 4] [--runs ceiling plain appearance]
        [--tested_at plain=5000]     # score a run that was stopped early at its test of that step
    .venv/bin/python bench/appearance.py cost --ckpt outputs/bench-appearance-7000-ceiling/checkpoints/last.ckpt

quality: builds outputs/bench-appearance-scene-g<G>, a copy of lego 400 (../shared/data) in which image k
has the look of group k mod G (deterministic exposure, white balance, gamma, saturation:
internal/data/variation.py), then trains three runs with the same recipe (configs/blender.yaml +
configs/cpu_fast.yaml, --steps) through main.py fit and scores the 50 test views with main.py test:
  ceiling     plain 3DGS on the original scene (scored against the original test images)
  plain       plain 3DGS on the varied scene
  appearance  AppearanceMLPRenderer (configs/appearance.yaml) on the varied scene, groups from the JSON
It prints test PSNR/SSIM of each (overall and per group), the differences, and writes a contact sheet
(one test view per group: ground truth, appearance, plain, ceiling) next to the experiments.

cost: the same trained Gaussians (a checkpoint of any run; ~112k for lego 400 at 7k steps) in three
models: plain, appearance (features and MLP randomised, past the warm-up) and, for comparison, the
original's shape of the model (a 2x64 ReLU MLP on every Gaussian's [feature, group embedding], an offset
in [-1,1] added to the colour; bench-only code). Full training steps (render, L1 + SSIM loss, backward,
fused Adam) alternate between them on the same images, on the CPU backend with the threads torch has.
Prints the median step of each and the ratios to plain (goal for appearance: <= 1.15).
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

import numpy as np
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))
LEGO = DATA / "nerf_synthetic_lego_400"
GROUP_FILE = "appearance_groups"


def load() -> str:
    return f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


# ---------------------------------------------------------------------------- quality

def varied_scene(output: Path, groups: int, seed: int) -> Path:
    from internal.data.variation import make_varied_blender_scene

    dst = output / f"bench-appearance-scene-g{groups}-s{seed}"
    if not (dst / f"{GROUP_FILE}.json").is_file():
        print(f"writing the varied scene {dst}", flush=True)
        make_varied_blender_scene(LEGO, dst, num_groups=groups, seed=seed, group_file=GROUP_FILE)
    return dst


def train_and_test(name: str, data: Path, steps: int, output: Path, appearance: bool, extra: list[str],
                   tested_at: int | None = None) -> dict:
    configs = ["configs/blender.yaml", "configs/cpu_fast.yaml"] + (["configs/appearance.yaml"] if appearance else [])
    exp = output / name
    cmd = [sys.executable, "main.py", "fit"] + sum((["--config", c] for c in configs), []) + [
        "--data.path", str(data), "-n", name, "--output", str(output),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--save_steps", f"[{steps}]",
        "--model.optimization.means_lr_max_steps", str(steps), "--trainer.enable_progress_bar", "false",
    ] + (["--data.params.blender.appearance_groups", GROUP_FILE] if appearance else []) + extra
    if tested_at is not None:  # stopped early and tested by hand at that step
        if not (exp / "metrics" / f"test-step={tested_at}.csv").is_file():
            sys.exit(f"--tested_at: {exp} has no metrics/test-step={tested_at}.csv; test that checkpoint first "
                     f"(main.py test --config {exp}/config.yaml --ckpt_path CKPT)")
        print(f"{name}: scored at step {tested_at} (stopped before {steps})", flush=True)
        return {"name": name, "exp": exp, "fit_s": None, "steps": tested_at}
    if (exp / "metrics" / f"test-step={steps}.csv").is_file():
        print(f"{name}: already measured, reusing {exp}", flush=True)
        return {"name": name, "exp": exp, "fit_s": None, "steps": steps}
    print("+", " ".join(cmd), f"({load()})", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    fit_s = time.time() - t0
    subprocess.run([sys.executable, "main.py", "test", "--config", str(exp / "config.yaml"), "--ckpt_path", "last",
                    "--trainer.enable_progress_bar", "false"], cwd=REPO, check=True)
    print(f"{name}: fit {fit_s:.0f} s ({load()})", flush=True)
    return {"name": name, "exp": exp, "fit_s": fit_s, "steps": steps}


def group_of_images(scene: Path) -> dict[str, str]:
    groups = json.loads((scene / f"{GROUP_FILE}.json").read_text())
    return {Path(n).stem: g for g, names in groups.items() for n in names if n.startswith("test/")}


def summarise(run: dict, groups: dict[str, str]) -> dict:
    rows = [r for r in read_rows(run["exp"] / "metrics" / f"test-step={run['steps']}.csv") if r["image"] != "MEAN"]
    per_group: dict[str, list[float]] = {}
    for r in rows:
        per_group.setdefault(groups[Path(r["image"]).stem], []).append(float(r["psnr"]))
    import torch

    n = int(torch.load(run["exp"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]["gaussians.means"].shape[0])
    return {"name": run["name"], "steps": run["steps"], "psnr": float(np.mean([float(r["psnr"]) for r in rows])),
            "ssim": float(np.mean([float(r["ssim"]) for r in rows])), "images": len(rows), "gaussians": n,
            "fit_s": run["fit_s"], "per_group": {g: float(np.mean(v)) for g, v in sorted(per_group.items())},
            "protocols": sorted({r.get("protocol", "") for r in rows} - {""})}


def contact_sheet(runs: dict, groups: dict[str, str], out: Path, size: int = 200) -> Path:
    """One row per group (its first test view): varied ground truth, appearance, plain, ceiling."""
    first: dict[str, str] = {}
    for stem, g in sorted(groups.items(), key=lambda kv: int(kv[0].split("_")[-1])):
        first.setdefault(g, stem)

    def img(run: str, stem: str, kind: str) -> np.ndarray:
        folder = runs[run]["exp"] / "renders" / f"test-step={runs[run]['steps']}"
        f = next(folder.glob(f"*_{stem}_{kind}.png"))
        return np.asarray(Image.open(f).convert("RGB").resize((size, size)))

    rows = []
    for g, stem in sorted(first.items()):
        cells = [img("appearance", stem, "gt"), img("appearance", stem, "render"), img("plain", stem, "render")]
        if "ceiling" in runs:
            cells.append(img("ceiling", stem, "render"))
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return out


def quality(args, extra: list[str]) -> None:
    output = (REPO / args.output).resolve()
    if not LEGO.exists():
        sys.exit(f"skip: {LEGO} not found (set GS_SHARED_DATA)")
    scene = varied_scene(output, args.groups, args.seed)
    tag = f"{args.steps}-g{args.groups}"
    plan = {"ceiling": (LEGO, False), "plain": (scene, False), "appearance": (scene, True)}
    tested_at = {}
    for item in args.tested_at:
        key, _, step = item.partition("=")
        if key not in plan or not step.isdigit():
            sys.exit(f"--tested_at {item!r}: expected RUN=STEP with RUN one of {', '.join(plan)}")
        tested_at[key] = int(step)
    runs = {}
    for key in args.runs:
        data, appearance = plan[key]
        runs[key] = train_and_test(f"bench-appearance-{tag}-{key}", data, args.steps, output, appearance, extra,
                                   tested_at.get(key))
    groups = group_of_images(scene)
    summary = {k: summarise(r, groups) for k, r in runs.items()}
    for s in summary.values():
        print(json.dumps(s))
    if {"plain", "appearance"} <= set(summary):
        gain = summary["appearance"]["psnr"] - summary["plain"]["psnr"]
        print(f"appearance - plain on the varied scene: {gain:+.2f} dB (goal >= +3)")
    if {"ceiling", "appearance"} <= set(summary):
        gap = summary["ceiling"]["psnr"] - summary["appearance"]["psnr"]
        print(f"ceiling - appearance: {gap:+.2f} dB (goal <= 1)")
    if {"plain", "appearance"} <= set(runs):
        sheet = contact_sheet(runs, groups, output / f"bench-appearance-{tag}-contact_sheet.png")
        print(f"contact sheet (rows: groups; columns: varied ground truth, appearance, plain{', ceiling' if 'ceiling' in runs else ''}): {sheet}")


# ---------------------------------------------------------------------------- cost

def cost(args) -> None:
    import torch

    from internal import metrics
    from internal.data import BlenderParams, DataParams, load_scene
    from internal.data.images import load_image
    from internal.gaussians import GaussianModel
    from internal.optim import create_optimizer
    from internal.renderers import AppearanceMLPRenderer, VanillaRenderer

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    sd = {k[len("gaussians."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("gaussians.")}
    sh_degree = int(round((sd["shN"].shape[1] + 1) ** 0.5)) - 1
    scene = load_scene(LEGO, DataParams(blender=BlenderParams(random_points=1)))
    ids = scene.train_ids[: args.images]
    images = [torch.from_numpy(load_image(scene, i).image).float() / 255.0 for i in ids]
    bg = torch.ones(3)
    lrs = {"means": 1.6e-4, "quats": 1e-3, "scales": 5e-3, "opacities": 0.05, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}

    def build(renderer):
        model = GaussianModel(sh_degree)
        model.load_state_dict({k: v for k, v in sd.items() if k in GaussianModel.PARAM_NAMES or k == "active_sh_degree"}, strict=False)
        renderer.setup(model, scene, "fit")
        extra_lrs, groups = renderer.optimizer_groups()
        opt = create_optimizer(model, {**lrs, **extra_lrs}, extra_groups=groups)
        return model, opt

    plain = VanillaRenderer(backend="cpu")
    app = AppearanceMLPRenderer(backend="cpu", warm_up=0)
    per_gaussian = PerGaussianMLPRenderer()
    models = {"plain": (plain, *build(plain)), "appearance": (app, *build(app)),
              "per-Gaussian MLP": (per_gaussian, *build(per_gaussian))}
    with torch.no_grad():  # trained-looking models (the cost does not depend on the values)
        g = torch.Generator().manual_seed(0)
        for p in list(app.parameters()) + list(per_gaussian.parameters()):
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    for r, m, o in models.values():
        r.train()
        r.begin_step(10_000, o, 30_000)

    def step(key: str, k: int) -> float:
        renderer, model, opt = models[key]
        t = time.perf_counter()
        out = renderer(model, scene.cameras[ids[k]], bg)
        out.means2d.retain_grad()
        pred = out.colors[0]
        loss = 0.8 * metrics.l1(pred, images[k]) + 0.2 * (1.0 - metrics.ssim(pred, images[k]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    n = models["plain"][1].num_gaussians
    w, h = int(scene.cameras.width[0]), int(scene.cameras.height[0])
    print(f"{n} Gaussians, SH degree {sh_degree}, {w}x{h} px, {torch.get_num_threads()} threads; {load()}", flush=True)
    keys = list(models)
    for k in range(2):  # warm-up: allocator, first calls
        for key in keys:
            step(key, k)
    times = {key: [] for key in keys}
    for rep in range(args.reps):
        k = rep % len(ids)
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:  # rotate the order
            times[key].append(step(key, k))
    med = {k: statistics.median(v) for k, v in times.items()}
    for key in keys[1:]:
        pairs = sorted(a / p for a, p in zip(times[key], times["plain"]))
        print(f"{key}: {1e3 * med[key]:.1f} ms/step against plain {1e3 * med['plain']:.1f} ms/step (medians of {args.reps}): "
              f"ratio {med[key] / med['plain']:.3f}, median of paired ratios {statistics.median(pairs):.3f}")
    print(f"goal for appearance: ratio <= 1.15; {load()}")


def PerGaussianMLPRenderer():
    """The original's shape of the model, for the cost comparison only: an MLP (2 hidden layers of 64,
    ReLU) on every Gaussian's [feature, group embedding], whose sigmoid output mapped to [-1,1] is added
    to the colour."""
    import torch
    from torch import nn

    from internal.renderers import AppearanceMLPRenderer
    from internal.renderers.appearance import FEATURES

    class PerGaussian(AppearanceMLPRenderer):
        def __init__(self):
            super().__init__(backend="cpu", warm_up=0)
            self.net = nn.Sequential(nn.Linear(self.feature_dim + self.embedding_dim, 64), nn.ReLU(),
                                     nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))

        def _render(self, gaussians, cameras, background, embeddings, sh_degree=None):
            colors = self._base_colors(gaussians, cameras, sh_degree)[0]
            f = getattr(gaussians, FEATURES)
            x = torch.cat([f, embeddings[0].expand(f.shape[0], -1)], dim=1)
            offset = torch.sigmoid(self.net(x)) * 2.0 - 1.0
            return self._rasterize(gaussians, cameras, background, (colors + offset).clamp(0.0, 1.0)[None], None)

    return PerGaussian()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--steps", type=int, default=7000)
    q.add_argument("--groups", type=int, default=4)
    q.add_argument("--seed", type=int, default=0, help="seed of the looks")
    q.add_argument("--runs", nargs="+", default=["ceiling", "plain", "appearance"], choices=["ceiling", "plain", "appearance"])
    q.add_argument("--output", default="outputs")
    q.add_argument("--tested_at", nargs="*", default=[], metavar="RUN=STEP",
                   help="a run stopped before --steps, scored at its test of STEP (it is not trained further)")
    c = sub.add_parser("cost")
    c.add_argument("--ckpt", required=True, type=Path)
    c.add_argument("--reps", type=int, default=16)
    c.add_argument("--images", type=int, default=8)
    args, extra = ap.parse_known_args()  # quality: anything else goes to main.py fit
    if args.what == "quality":
        quality(args, extra)
    else:
        cost(args)


if __name__ == "__main__":
    main()
