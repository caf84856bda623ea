"""Benchmark of the capped image cache: stream N generated photos from disk through the DataModule.

    .venv/bin/python bench/cache.py                      # 2,000 JPEGs of 1600x1200, cap 64
    .venv/bin/python bench/cache.py --n 300 --cap 16     # quicker

Prints the resident memory before streaming (base), its peak while streaming one training epoch,
the bound base + 2.5 x cap x (bytes of one decoded image), and images per second. Exits 1 when the
peak exceeds the bound. The images are generated once into --dir (16 distinct JPEGs, copied to N
files) by a child process, so that generating them does not count in this process's peak.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(root: Path, n: int, width: int, height: int) -> None:
    """A COLMAP text scene: one PINHOLE camera, n posed images (16 distinct JPEGs), a few points."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete_{n}_{width}x{height}"
    if marker.exists():
        return
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    unique = []
    for k in range(16):
        img = np.stack([127 + 120 * np.sin(x / (50 + 7 * k)), 127 + 120 * np.cos(y / (40 + 5 * k)), (x + y) / (width + height) * 255], -1)
        img += rng.normal(0, 12, img.shape).astype(np.float32)  # photo-like entropy: ~0.5 MB per JPEG
        p = root / f"u{k}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        unique.append(p)
    lines = []
    for i in range(n):
        name = f"{i:05d}.jpg"
        shutil.copyfile(unique[i % 16], root / "images" / name)
        a = 2 * np.pi * i / n
        c, s = np.cos(a / 2), np.sin(a / 2)  # rotation about y by a, camera 4 units out
        lines.append(f"{i + 1} {c} 0 {s} 0 0 0 4 1 {name}\n")
    for p in unique:
        p.unlink()
    f = 0.9 * width
    (root / "sparse" / "0" / "cameras.txt").write_text(f"1 PINHOLE {width} {height} {f} {f} {width / 2} {height / 2}\n")
    (root / "sparse" / "0" / "images.txt").write_text("".join(l + "\n" for l in lines))
    (root / "sparse" / "0" / "points3D.txt").write_text("".join(f"{j + 1} {rng.uniform(-1, 1)} {rng.uniform(-1, 1)} {rng.uniform(-1, 1)} 128 128 128 0.5\n" for j in range(100)))
    marker.touch()


def rss_kib(field: str = "VmRSS") -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1200)
    ap.add_argument("--cap", type=int, default=64, help="train_max_num_images_to_cache")
    ap.add_argument("--threads", type=int, default=2, help="decode threads")
    ap.add_argument("--step-ms", type=float, default=0.0, help="time the consumer spends per image (a training step); "
                    "a slow consumer lets the prefetcher fill its chunk: the worst case for memory")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gs_bench_cache"))
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        generate(args.dir, args.n, args.width, args.height)
        return 0

    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate-only", "--n", str(args.n), "--width", str(args.width),
                    "--height", str(args.height), "--dir", str(args.dir)], check=True)
    gen_s = time.perf_counter() - t0

    from internal.data import ColmapParams, DataParams
    from internal.data.datamodule import DataModule

    params = DataParams(colmap=ColmapParams(split_mode="reconstruction"), train_max_num_images_to_cache=args.cap, decode_threads=args.threads)
    dm = DataModule(str(args.dir), params)
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()

    base = rss_kib()
    peak = [base]
    done = threading.Event()

    def sample():  # VmHWM includes this process's past; sample VmRSS instead
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    count, checksum = 0, 0
    for batch in loader:
        checksum += int(batch.image[batch.image.shape[0] // 2, batch.image.shape[1] // 2, 0])  # touch it
        count += 1
        if args.step_ms:
            time.sleep(args.step_ms / 1000)
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak_kib = max(peak[0], rss_kib())

    one = args.width * args.height * 3
    bound = base * 1024 + 2.5 * args.cap * one if args.cap > 0 else None  # the claim is about cap N > 0
    ok = bound is None or peak_kib * 1024 <= bound
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"images: {count} of {args.width}x{args.height} JPEG from {args.dir} (generated/reused in {gen_s:.1f} s, scene parsed in {setup_s:.2f} s)")
    print(f"cap: {args.cap}, decode threads: {args.threads}, consumer step: {args.step_ms:g} ms, cpus: {os.cpu_count()}")
    print(f"one decoded image: {mib(one):.2f} MiB")
    print(f"base RSS: {mib(base * 1024):.0f} MiB   peak RSS: {mib(peak_kib * 1024):.0f} MiB   growth: {mib((peak_kib - base) * 1024):.0f} MiB = {(peak_kib - base) * 1024 / one:.1f} decoded images")
    if bound is not None:
        print(f"bound: base + 2.5 x {args.cap} x one image = {mib(bound):.0f} MiB -> {'OK' if ok else 'EXCEEDED'}")
    print(f"throughput: {count / elapsed:.1f} images/s ({elapsed:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
