"""Rasterizer benchmark: forward and forward+backward time, peak memory and throughput per backend.

    .venv/bin/python bench/raster.py                         # garden + large, torch and cpu (gsplat with CUDA)
    .venv/bin/python bench/raster.py --scenes garden --repeats 9 --json bench/results/raster.json
    .venv/bin/python bench/raster.py --skip-torch-large      # the torch reference on 1M Gaussians takes minutes

Scenes
  garden  /work/shared/data/gsplat_test_garden/test_garden.npz (../shared/data): 138,766 points with colours,
          3 cameras 648x420. Gaussians: scales = mean distance to the 3 nearest neighbours (scipy cKDTree),
          seeded random rotations, opacities U(0.05, 0.95), SH degree 3 (DC from the colours, rest N(0, 0.1)).
  large   1,000,000 generated Gaussians in front of 2 cameras at 1280x720 (fx = fy = 1000): points uniform in
          a box 12 x 7 x 10 units, 3-10 units ahead, scales from the 3 nearest neighbours like garden.

What is timed, per camera (each camera is its own C=1 call, as in training): the whole
internal.rasterize.rasterize(...) call, projection + SH + compositing + background, with inputs that
require grad (the training forward), and the forward plus backward of loss = sum(colors * R) + sum(alphas * R')
(R, R' fixed random weights: every input gradient is non-trivial). Each figure is the median over
repeats x cameras (the machine is shared and noisy; min is printed too, and "cpu", the CPU time the
process used in all its threads, which other jobs on the machine do not inflate). The torch reference on the large
scene is timed forward-only without autograd on 1 camera, 1 repeat (about a minute; with autograd it
needs more than the 23 GB of this machine), or skipped with --skip-torch-large; the output says so.
The torch reference runs --torch-repeats times per camera (default 1: seconds per call on garden).

Peak memory: measured in a fresh child process per (scene, backend), which runs one forward and one
backward and reports the peak resident-set growth of each phase: the kernel's high-water mark VmHWM is
reset (echo 5 > /proc/self/clear_refs) just before the phase, and peak = VmHWM after - VmRSS before. The
child runs with MALLOC_MMAP_THRESHOLD_=65536 and MALLOC_TRIM_THRESHOLD_=0, so that large blocks freed by
torch go back to the OS at once and RSS follows live memory instead of glibc's caches. The backward's
figure is measured with the forward's outputs and saved tensors already alive (they are in the baseline).

OpenMP: torch and the cpu backend share GNU OpenMP, whose idle threads spin at every barrier by default.
On a machine shared with other jobs a spinning or preempted thread stalls each parallel region for up to a
scheduler slice, which made 2 threads 2-3x slower than 1 here; OMP_WAIT_POLICY=PASSIVE (set before Python
starts) avoids that. The header line prints the policy in effect.

Throughput: pixel-Gaussian pairs per second, where pairs = sum over tiles of (Gaussians in the tile's list
x pixels of the tile), the same count for every backend (the work a compositor without early termination
does; the reference does exactly this, the cpu backend stops early and skips pixels outside footprints).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from internal.rasterize import native_available, rasterize  # noqa: E402
from internal.rasterize.projection import SH_C0, project_gaussians  # noqa: E402
from internal.rasterize.reference import bin_gaussians  # noqa: E402

GARDEN = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data")) / "gsplat_test_garden" / "test_garden.npz"


# ------------------------------------------------------------------------------------------------
# Scenes


def knn_scales(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=4, workers=-1)
    return np.maximum(dist[:, 1:].mean(axis=1), 1e-7)


def gaussians_from_points(points: np.ndarray, rgb: np.ndarray | None, seed: int, sh_degree: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    scales = torch.from_numpy(knn_scales(points)).float()[:, None].repeat(1, 3)
    coeffs = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.1
    if rgb is None:
        rgb = torch.rand(n, 3, generator=g).numpy()
    coeffs[:, 0] = (torch.from_numpy(rgb).float() - 0.5) / SH_C0
    return dict(
        means=torch.from_numpy(points).float(),
        quats=torch.randn(n, 4, generator=g),
        scales=scales,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        colors=coeffs,
        sh_degree=sh_degree,
    )


def garden_scene() -> dict:
    if not GARDEN.exists():
        raise FileNotFoundError(f"{GARDEN} not found (set GS_SHARED_DATA to the shared/data folder)")
    d = np.load(GARDEN)
    scene = gaussians_from_points(d["means3d"].astype(np.float64), d["colors"].astype(np.float64) / 255.0, seed=0)
    scene.update(viewmats=torch.from_numpy(d["viewmats"]).float(), Ks=torch.from_numpy(d["Ks"]).float(),
                 width=int(d["width"]), height=int(d["height"]))
    return scene


def large_scene(n: int = 1_000_000) -> dict:
    rng = np.random.default_rng(1)
    points = rng.uniform([-6.0, -3.5, 3.0], [6.0, 3.5, 13.0], size=(n, 3))
    scene = gaussians_from_points(points, None, seed=1)
    viewmats = torch.eye(4).repeat(2, 1, 1)
    c, s = math.cos(0.1), math.sin(0.1)  # second camera: turned 0.1 rad about y, shifted
    viewmats[1, :3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    viewmats[1, 0, 3] = 0.5
    K = torch.tensor([[1000.0, 0.0, 640.0], [0.0, 1000.0, 360.0], [0.0, 0.0, 1.0]])
    scene.update(viewmats=viewmats, Ks=K.repeat(2, 1, 1), width=1280, height=720)
    return scene


SCENES = {"garden": garden_scene, "large": large_scene}


# ------------------------------------------------------------------------------------------------
# Timing


def render(scene: dict, cam: int, backend: str, params: list[torch.Tensor]):
    means, quats, scales, opacities, colors = params
    return rasterize(
        means, quats, scales, opacities, colors, scene["viewmats"][cam : cam + 1], scene["Ks"][cam : cam + 1],
        scene["width"], scene["height"], sh_degree=scene["sh_degree"], backend=backend,
    )


def leaf_params(scene: dict, device: str = "cpu") -> list[torch.Tensor]:
    keys = ("means", "quats", "scales", "opacities", "colors")
    return [scene[k].detach().to(device).clone().requires_grad_(True) for k in keys]


def loss_weights(scene: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    h, w = scene["height"], scene["width"]
    return torch.rand(1, h, w, 3, generator=g), torch.rand(1, h, w, 1, generator=g)


def sync(backend: str) -> None:
    if backend == "gsplat":
        torch.cuda.synchronize()


def time_forward_no_grad(scene: dict, backend: str, cameras: list[int]) -> dict:
    """Forward only, under torch.no_grad (for the torch reference on the large scene, see main)."""
    params = [p.detach() for p in leaf_params(scene)]
    times, cpu = [], []
    for cam in cameras:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            render(scene, cam, backend, params)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"forward_no_grad_ms": 1e3 * statistics.median(times), "forward_no_grad_cpu_ms": 1e3 * statistics.median(cpu),
            "samples": len(times)}


def time_backend(scene: dict, backend: str, cameras: list[int], repeats: int) -> dict:
    device = "cuda" if backend == "gsplat" else "cpu"
    if device == "cuda":
        scene = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    w_rgb, w_alpha = (w.to(device) for w in loss_weights(scene))
    fwd, fwdbwd, cpu_fwd, cpu_fwdbwd = [], [], [], []
    for rep in range(repeats):
        for cam in cameras:
            params = leaf_params(scene, device)
            sync(backend)
            t0, c0 = time.perf_counter(), time.process_time()
            out = render(scene, cam, backend, params)
            sync(backend)
            t1, c1 = time.perf_counter(), time.process_time()
            loss = (out.colors * w_rgb).sum() + (out.alphas * w_alpha).sum()
            loss.backward()
            sync(backend)
            t2, c2 = time.perf_counter(), time.process_time()
            fwd.append(t1 - t0)
            fwdbwd.append(t2 - t0)
            cpu_fwd.append(c1 - c0)
            cpu_fwdbwd.append(c2 - c0)
    return {
        "forward_ms": 1e3 * statistics.median(fwd),
        "forward_backward_ms": 1e3 * statistics.median(fwdbwd),
        "forward_min_ms": 1e3 * min(fwd),
        "forward_backward_min_ms": 1e3 * min(fwdbwd),
        # CPU seconds the process used (all threads): robust to other jobs on a shared machine
        "forward_cpu_ms": 1e3 * statistics.median(cpu_fwd),
        "forward_backward_cpu_ms": 1e3 * statistics.median(cpu_fwdbwd),
        "samples": len(fwd),
    }


def tile_pairs(scene: dict, cam: int) -> int:
    """Pixel-Gaussian pairs in the tile lists of one camera (see the module docstring)."""
    with torch.no_grad():
        means2d, _, depths, radii = project_gaussians(
            scene["means"], scene["quats"], scene["scales"], scene["viewmats"][cam : cam + 1],
            scene["Ks"][cam : cam + 1], scene["width"], scene["height"],
        )
        _, offsets = bin_gaussians(means2d[0], radii[0], depths[0], scene["width"], scene["height"], 16)
    counts = (offsets[1:] - offsets[:-1]).double()
    w, h = scene["width"], scene["height"]
    tx, ty = (w + 15) // 16, (h + 15) // 16
    cols = torch.full((tx,), 16.0, dtype=torch.float64)
    cols[-1] = w - 16 * (tx - 1)
    rows = torch.full((ty,), 16.0, dtype=torch.float64)
    rows[-1] = h - 16 * (ty - 1)
    pixels = (rows[:, None] * cols[None, :]).reshape(-1)
    return int((counts * pixels).sum().item())


# ------------------------------------------------------------------------------------------------
# Peak memory, in a child process


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(scene_name: str, backend: str, threads: int) -> None:
    torch.set_num_threads(threads)
    scene = SCENES[scene_name]()
    w_rgb, w_alpha = loss_weights(scene)
    params = leaf_params(scene)
    render(scene, 0, backend, leaf_params(scene))  # warm-up: lazy initialisation is not the op's memory
    import gc

    gc.collect()
    base = _status_kb("VmRSS")
    _reset_peak()
    out = render(scene, 0, backend, params)
    fwd_peak = _status_kb("VmHWM") - base
    loss = (out.colors * w_rgb).sum() + (out.alphas * w_alpha).sum()
    base_b = _status_kb("VmRSS")
    _reset_peak()
    loss.backward()
    bwd_peak = _status_kb("VmHWM") - base_b
    print(json.dumps({"forward_peak_mb": fwd_peak / 1024.0, "backward_peak_mb": bwd_peak / 1024.0}))


def measure_memory(scene_name: str, backend: str, threads: int) -> dict | None:
    if backend == "gsplat":
        return None  # CUDA memory is not RSS; see torch.cuda.max_memory_allocated in a GPU run
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-child", scene_name, backend, "--threads", str(threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  memory measurement failed: {res.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="garden,large", help="comma-separated: garden, large")
    ap.add_argument("--backends", default=None, help="comma-separated; default torch,cpu (+ gsplat with CUDA)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per camera (median reported)")
    ap.add_argument("--torch-repeats", type=int, default=1, help="repeats per camera for the (slow) torch reference")
    ap.add_argument("--skip-torch-large", action="store_true", help="do not run the torch reference on large")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    ap.add_argument("--json", default=None, help="write {scene: {backend: {...}}} here")
    ap.add_argument("--memory-child", nargs=2, metavar=("SCENE", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.threads)
        return
    torch.set_num_threads(args.threads)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = ["torch", "cpu"] + (["gsplat"] if torch.cuda.is_available() else [])
    if "cpu" in backends and not native_available():
        print("cpu backend: the native extension is not built (scripts/setup.sh); skipping it")
        backends.remove("cpu")
    print(f"threads {torch.get_num_threads()} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"torch {torch.__version__}, repeats {args.repeats}, "
          f"backends {', '.join(backends)}" + ("" if torch.cuda.is_available() else " (no CUDA: gsplat not run)"))
    results: dict = {}
    for name in args.scenes.split(","):
        t0 = time.perf_counter()
        scene = SCENES[name]()
        n_cam = scene["viewmats"].shape[0]
        print(f"\n== {name}: {scene['means'].shape[0]:,} Gaussians, {n_cam} cameras "
              f"{scene['width']}x{scene['height']}, SH degree {scene['sh_degree']} (built in {time.perf_counter() - t0:.1f} s)")
        pairs = statistics.mean(tile_pairs(scene, c) for c in range(n_cam))
        print(f"   pixel-Gaussian pairs in tile lists: {pairs / 1e6:.1f} M per camera")
        results[name] = {}
        for backend in backends:
            cameras, repeats, note = list(range(n_cam)), args.repeats, ""
            if backend == "torch":
                repeats = args.torch_repeats
            if backend == "torch" and name == "large":
                # With autograd the reference keeps every tile batch's gathered inputs for its
                # checkpointed backward: on this scene that exceeded 23 GB and was OOM-killed. So by
                # default it is timed forward-only, without autograd, on 1 camera.
                if args.skip_torch_large:
                    print(f"   {backend:6s} skipped (--skip-torch-large)")
                    continue
                r = time_forward_no_grad(scene, backend, [0])
                results[name][backend] = r
                print(f"   {backend:6s} forward without autograd {r['forward_no_grad_ms']:9.1f} ms (cpu "
                      f"{r['forward_no_grad_cpu_ms']:.0f}) on 1 camera, 1 repeat; with autograd it needs > 23 GB "
                      f"(OOM here), so no fwd+bwd or memory figures")
                continue
            r = time_backend(scene, backend, cameras, repeats)
            if not args.no_memory:
                mem = measure_memory(name, backend, args.threads)
                if mem:
                    r.update(mem)
                    r["peak_mb"] = max(mem["forward_peak_mb"], mem["backward_peak_mb"])
            r["pairs_per_s"] = pairs / (r["forward_ms"] / 1e3)
            results[name][backend] = r
            mem_txt = (f", peak RSS growth fwd {r['forward_peak_mb']:.0f} MB / bwd {r['backward_peak_mb']:.0f} MB"
                       if "peak_mb" in r else "")
            print(f"   {backend:6s} forward {r['forward_ms']:9.1f} ms (min {r['forward_min_ms']:.1f}, cpu {r['forward_cpu_ms']:.0f})  "
                  f"fwd+bwd {r['forward_backward_ms']:9.1f} ms (min {r['forward_backward_min_ms']:.1f}, "
                  f"cpu {r['forward_backward_cpu_ms']:.0f})  {r['pairs_per_s'] / 1e9:.2f} G pairs/s{mem_txt}  "
                  f"[{r['samples']} samples]{note}")
        if "torch" in results[name] and "forward_no_grad_ms" in results[name]["torch"]:
            ref = results[name]["torch"]
            for backend, r in results[name].items():
                if backend != "torch":
                    print(f"   {backend} forward (with autograd) vs torch forward without autograd: "
                          f"{ref['forward_no_grad_ms'] / r['forward_ms']:.0f}x faster")
        elif "torch" in results[name]:
            ref = results[name]["torch"]
            for backend, r in results[name].items():
                if backend != "torch":
                    print(f"   {backend} vs torch: forward {ref['forward_ms'] / r['forward_ms']:.0f}x, "
                          f"fwd+bwd {ref['forward_backward_ms'] / r['forward_backward_ms']:.0f}x faster")
        if "cpu" in results[name] and "peak_mb" in results[name]["cpu"]:
            r = results[name]["cpu"]
            print(f"   cpu backward / forward peak memory: {r['backward_peak_mb'] / max(r['forward_peak_mb'], 1e-9):.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
