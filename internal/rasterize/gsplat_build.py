"""Compile gsplat's CUDA kernels once, ahead of training, with progress shown; then check them on the GPU.

    python -m internal.rasterize.gsplat_build            # compile (a no-op when cached) + a one-Gaussian render
    python -m internal.rasterize.gsplat_build --jobs 16 --no-check

gsplat (a pure wheel) compiles its CUDA sources with torch's JIT the first time it is imported on a
machine with nvcc, silently and for minutes, into torch's extension cache (~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR). scripts/setup.sh runs this module so that the compile happens there, with a
progress bar, instead of inside the first training step. The compile runs in a child process with
gsplat's VERBOSE=1 so that ninja's "[k/n]" lines can be counted; the full log is kept on failure.

Training later imports gsplat with the same flags, finds the cached build up to date and loads it in a
second. Anything that changes the compile commands (TORCH_CUDA_ARCH_LIST, FAST_COMPILE, NO_FAST_MATH, the
CUDA toolkit, torch) makes that import compile again: set them the same way here and at training time.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque

NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
CHILD = "from gsplat.cuda._backend import _C; import sys; sys.exit(0 if _C is not None else 3)"


def default_jobs() -> int:
    """Parallel compile jobs: one per core, at most one per 2 GiB of memory (nvcc -O3 on gsplat's files)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 2.0 * cores
    return max(1, min(cores, int(mem_gib // 2)))


class Progress:
    """A bar on a terminal (rich), otherwise one plain line per finished compile step (logs, CI, remote runs)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.bar = None
        self.task = None
        self.last = -1
        self.t0 = time.time()

    def __enter__(self):
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(TextColumn("[gsplat] compiling CUDA kernels"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("compile", total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if done == self.last:
            return
        self.last = done
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        else:
            print(f"[gsplat] compiling CUDA kernels: {done}/{total} steps done ({time.time() - self.t0:.0f} s)",
                  file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def compile_kernels(jobs: int | None = None, stream=sys.stderr) -> float:
    """Compile (or find cached) gsplat's CUDA extension in a child process; returns the seconds it took.

    Raises SystemExit with the tail of the compiler log and where the whole log is when it fails.
    """
    from .gsplat_backend import ensure_ninja_on_path

    ensure_ninja_on_path()
    env = dict(os.environ, VERBOSE="1", MAX_JOBS=str(jobs or os.environ.get("MAX_JOBS") or default_jobs()))
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.time()
    tail: deque[str] = deque(maxlen=60)
    log = tempfile.NamedTemporaryFile("w", prefix="gsplat_build_", suffix=".log", delete=False)
    print(f"[gsplat] building the CUDA extension with MAX_JOBS={env['MAX_JOBS']}"
          f"{', TORCH_CUDA_ARCH_LIST=' + env['TORCH_CUDA_ARCH_LIST'] if env.get('TORCH_CUDA_ARCH_LIST') else ''}"
          " (minutes the first time, seconds when cached)", file=stream, flush=True)
    with log, Progress(stream) as progress:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            m = NINJA_STEP.match(line)
            if m:
                progress.update(int(m.group(1)), int(m.group(2)))
        rc = proc.wait()
    seconds = time.time() - t0
    if rc == 3:
        raise SystemExit(
            "[gsplat] no CUDA toolkit found (nvcc), so gsplat cannot compile its kernels: install the CUDA toolkit "
            "whose major version matches torch's CUDA (python -c 'import torch; print(torch.version.cuda)'), put nvcc "
            "on PATH or set CUDA_HOME, and run this again. (Or set up for the CPU only: GS_GPU=0 scripts/setup.sh)"
        )
    if rc != 0:
        shown = "\n".join(tail)
        raise SystemExit(f"{shown}\n[gsplat] compiling the CUDA kernels failed (exit status {rc}); the whole log is "
                         f"{log.name}. The usual cause is an nvcc whose CUDA version differs from torch's.")
    os.unlink(log.name)
    print(f"[gsplat] CUDA extension ready in {seconds:.0f} s", file=stream, flush=True)
    return seconds


def smoke_test() -> str:
    """Render one Gaussian through our gsplat backend and check that it lands where it should, with gradients."""
    import torch

    from . import rasterize

    dev = torch.device("cuda")
    means = torch.tensor([[0.0, 0.0, 4.0]], device=dev, requires_grad=True)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=dev)
    scales = torch.full((1, 3), 0.2, device=dev)
    opacities = torch.tensor([0.9], device=dev)
    colors = torch.tensor([[1.0, 0.5, 0.25]], device=dev)
    viewmats = torch.eye(4, device=dev)[None]
    Ks = torch.tensor([[[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]]], device=dev)
    out = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 64, 48, backend="gsplat")
    out.means2d.retain_grad()
    out.colors.sum().backward()
    # Pixel (32, 24) is evaluated at (32.5, 24.5), half a pixel from the mean in x and y; the 2D variance is
    # (50 / 4)^2 * 0.2^2 + 0.3 = 6.55 px^2 in both axes, so alpha there is 0.9 * exp(-0.5 * 0.5 / 6.55).
    alpha = 0.9 * math.exp(-0.25 / 6.55)
    centre = out.colors[0, 24, 32].tolist()
    corner = float(out.alphas[0, 0, 0])
    ok = (abs(centre[0] - alpha) < 1e-3 and abs(centre[1] - 0.5 * alpha) < 1e-3 and corner < 1e-6
          and int(out.radii[0, 0]) > 0 and means.grad is not None and bool(torch.isfinite(means.grad).all()))
    if not ok:
        raise SystemExit(f"[gsplat] the kernels compiled but a one-Gaussian render is wrong: centre {centre}, "
                         f"corner alpha {corner}, radius {int(out.radii[0, 0])}, means grad {means.grad}")
    return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: $MAX_JOBS, else cores, "
                    "at most one per 2 GiB of memory)")
    ap.add_argument("--no-check", action="store_true", help="skip the one-Gaussian render on the GPU afterwards")
    args = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        raise SystemExit(
            f"[gsplat] torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); the gsplat "
            "backend needs an NVIDIA GPU with a driver that supports that CUDA version (nvidia-smi). To compile "
            "without a GPU, name the target: TORCH_CUDA_ARCH_LIST=9.0"
        )
    compile_kernels(args.jobs)
    if args.no_check:
        return
    if not cuda:
        print("[gsplat] no GPU here: compiled only, the one-Gaussian render check is skipped", flush=True)
        return
    print(f"[gsplat] checked: a one-Gaussian render with gradients on {smoke_test()}", flush=True)


if __name__ == "__main__":
    main()
