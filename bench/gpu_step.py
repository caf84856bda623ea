"""A training step on the GPU against gsplat's own rasterization of the same step: our overhead over the library.

    python bench/gpu_step.py outputs/bench-lego400-7000 --json step.json     # 112k Gaussians, 400 px

EXP is an experiment folder of main.py fit trained on CUDA. The run resumes its checkpoint through
`main.py fit` (the real training step: data, renderer, SSIM loss, backward, density statistics, fused Adam),
skips --warmup steps and times the next --steps, each between CUDA-synchronised ends of consecutive steps
(so data loading counts). Then, on the model and camera of the last step, it times with CUDA events
(median of --repeats after warm-up):
  gsplat   gsplat.rasterization forward + backward with our settings, on leaf tensors (the library alone)
  backend  internal.rasterize.rasterize(backend="gsplat") forward + backward (our wrapper: radii, background)
  renderer the module's renderer from the raw parameters (activations, SH concatenation) forward + backward
and prints one JSON line; --json appends it to a file.

--cpu-dry-run runs the same plumbing on the CPU (bench/gpu_check.sh --cpu-dry-run): wall-clock timing instead of
CUDA events, and our cpu (or torch) backend standing in for gsplat, so that only the GPU itself is untested.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning  # noqa: E402
import torch  # noqa: E402

from bench.step_profile import resume_fit, resume_parser  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    """Median time of fn: CUDA events on a GPU, the wall clock otherwise (the dry run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


class GpuStepTimer(lightning.Callback):
    """Times training steps warmup+1 .. warmup+steps, then the rasterizer alone on the last step's model and camera."""

    def __init__(self, warmup: int = 20, steps: int = 100, repeats: int = 50, json_path: str = ""):
        self.warmup, self.steps, self.repeats, self.json_path = warmup, steps, repeats, json_path
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        self.ends.append(time.perf_counter())
        if len(self.ends) < self.warmup + self.steps + 1:
            return
        trainer.should_stop = True
        steps = [b - a for a, b in zip(self.ends[self.warmup:], self.ends[self.warmup + 1:])]
        rec = {
            "gaussians": pl_module.gaussians.num_gaussians,
            "sh_degree": int(pl_module.gaussians.active_sh_degree),
            "image": f"{int(batch.camera.width[0])}x{int(batch.camera.height[0])}",
            "step_ms_median": round(1000 * statistics.median(steps), 3),
            "step_ms_mean": round(1000 * sum(steps) / len(steps), 3),
            "steps_timed": len(steps),
        }
        rec.update(self.rasterizer_times(pl_module, batch))
        rec["overhead_ms"] = round(rec["step_ms_median"] - rec["gsplat_fwd_bwd_ms"], 3)
        cuda = torch.cuda.is_available()
        rec["device"] = torch.cuda.get_device_name() if cuda else "cpu (dry run: a CPU backend stands in for gsplat)"
        rec["torch"] = torch.__version__
        rec["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        rec["date"] = time.strftime("%Y-%m-%d %H:%M")
        print(json.dumps(rec), flush=True)
        if self.json_path:
            with open(self.json_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def rasterizer_times(self, pl_module, batch) -> dict:
        from internal.rasterize import native, rasterize

        cuda = torch.cuda.is_available()
        if cuda:
            from internal.rasterize.gsplat_backend import load_gsplat

            gsplat, ours = load_gsplat(), "gsplat"
        else:  # the dry run: a CPU backend stands in for gsplat and for our gsplat wrapper
            gsplat, ours = None, "cpu" if native.available() else "torch"
        g, cam = pl_module.gaussians, batch.camera
        W, H = int(cam.width[0]), int(cam.height[0])
        degree = int(g.active_sh_degree)
        bg = pl_module.scene_background.to(g.means.device)
        with torch.no_grad():
            leaves = [t.detach().clone().requires_grad_(True)
                      for t in (g.get_means(), g.get_quats(), g.get_scales(), g.get_opacities(), g.get_sh())]
            viewmats, Ks = cam.viewmats().to(leaves[0]), cam.Ks().to(leaves[0])
            gen = torch.Generator(device=leaves[0].device).manual_seed(0)
            weights = torch.rand((1, H, W, 4), generator=gen, device=leaves[0].device)

        def library():
            if gsplat is None:
                return backend()
            render, alphas, meta = gsplat.rasterization(
                *leaves, viewmats, Ks, W, H, near_plane=pl_module.renderer.near, far_plane=pl_module.renderer.far,
                eps2d=0.3, sh_degree=degree, packed=False, render_mode="RGB+ED", rasterize_mode="classic")
            meta["means2d"].retain_grad()
            ((render * weights).sum() + (alphas * weights[..., :1]).sum()).backward()

        def backend():
            out = rasterize(*leaves, viewmats, Ks, W, H, near=pl_module.renderer.near, far=pl_module.renderer.far,
                            sh_degree=degree, backgrounds=bg, backend=ours)
            out.means2d.retain_grad()
            ((out.colors * weights[..., :3]).sum() + (out.alphas * weights[..., 3:]).sum()
             + (out.depths * weights[..., 3:]).sum()).backward()

        def renderer():
            out = pl_module.renderer(g, cam, bg)
            out.means2d.retain_grad()
            ((out.colors * weights[..., :3]).sum() + (out.alphas * weights[..., 3:]).sum()).backward()

        times = {
            "gsplat_fwd_bwd_ms": median_ms(library, self.repeats),
            "backend_fwd_bwd_ms": median_ms(backend, self.repeats),
            "renderer_fwd_bwd_ms": median_ms(renderer, self.repeats),
        }
        pl_module.zero_grad(set_to_none=True)  # the renderer's backward accumulated into the parameters
        return {k: round(v, 3) for k, v in times.items()}


def main() -> None:
    ap = resume_parser(__doc__, warmup=20, steps=100)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", default="", help="append the result as one JSON line to this file")
    ap.add_argument("--cpu-dry-run", action="store_true", help="the plumbing on the CPU, a CPU backend for gsplat")
    args, extra = ap.parse_known_args()  # anything else is passed on to main.py fit
    if args.cpu_dry_run:
        device = ["--trainer.accelerator", "cpu", "--model.renderer.init_args.backend", "auto"]
    elif torch.cuda.is_available():
        device = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    else:
        sys.exit("error: bench/gpu_step.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "--cpu-dry-run checks the plumbing on the CPU")
    resume_fit(args.experiment, args.ckpt, args.warmup + args.steps + 2, "bench.gpu_step.GpuStepTimer",
               dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats, json_path=args.json),
               device + extra)


if __name__ == "__main__":
    main()
