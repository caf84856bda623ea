"""Fuzz: seeded mutations of COLMAP binary and text models (truncation, byte flips, garbage words,
deleted / duplicated / swapped lines, garbage numbers). Each must either load into a self-consistent
Scene or raise a one-line DatasetError naming a file of the scene: never another exception, a crash
or a hang (each case runs under a time bound)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import STATUE, SHARED_DATA, make_colmap_scene
from internal.data import DatasetError, load_scene
from internal.data.images import load_image

TOTAL_CASES = 600  # spread over 3 files x 2 formats x 2 bases (synthetic, statue when present)
TIME_BOUND_S = 5.0

GARBAGE_WORDS = [
    struct.pack("<Q", 0), struct.pack("<Q", 2**64 - 1), struct.pack("<Q", 2**63), struct.pack("<d", float("nan")),
    struct.pack("<d", float("inf")), struct.pack("<d", -1e308), struct.pack("<q", -1), struct.pack("<Q", 7), struct.pack("<Q", 10**12),
]
GARBAGE_TOKENS = ["nan", "inf", "-inf", "-1", "0", "1e309", "abc", "", "99999999999999999999", "3.5", "-0", "0x10", "1_0", "NaN", "\u00e9", "#"]


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    op = rng.integers(0, 6)
    n = max(len(b), 1)
    if op == 0:  # truncation
        return bytes(b[: int(rng.integers(0, n))])
    if op == 1:  # byte flips
        for _ in range(int(rng.integers(1, 9))):
            if b:
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return bytes(b)
    if op == 2:  # a garbage 8-byte word (count, id, size, double)
        w = GARBAGE_WORDS[int(rng.integers(0, len(GARBAGE_WORDS)))]
        at = int(rng.integers(0, n))
        b[at : at + 8] = w
        return bytes(b)
    if op == 3:  # deleted range
        a = int(rng.integers(0, n))
        return bytes(b[:a] + b[a + int(rng.integers(1, 64)) :])
    if op == 4:  # duplicated range
        a = int(rng.integers(0, n))
        return bytes(b[: a + 40] + b[a : a + 40] + b[a + 40 :])
    at = int(rng.integers(0, n))  # inserted random bytes
    return bytes(b[:at] + rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes() + b[at:])


def mutate_text(text: str, rng: np.random.Generator) -> bytes:
    lines = text.split("\n")
    op = rng.integers(0, 7)
    k = int(rng.integers(0, len(lines)))
    if op == 0:  # deleted line
        del lines[k]
    elif op == 1:  # duplicated line
        lines.insert(k, lines[k])
    elif op == 2:  # swapped lines
        j = int(rng.integers(0, len(lines)))
        lines[k], lines[j] = lines[j], lines[k]
    elif op == 3:  # a garbage number in a data line
        data = [i for i, l in enumerate(lines) if l and not l.startswith("#")]
        if data:
            k = data[int(rng.integers(0, len(data)))]
            tok = lines[k].split(" ")
            tok[int(rng.integers(0, len(tok)))] = GARBAGE_TOKENS[int(rng.integers(0, len(GARBAGE_TOKENS)))]
            lines[k] = " ".join(tok)
    elif op == 4:  # truncation
        return "\n".join(lines).encode()[: int(rng.integers(0, len(text) + 1))]
    elif op == 5:  # a garbage line
        lines.insert(k, " ".join(GARBAGE_TOKENS[int(i)] for i in rng.integers(0, len(GARBAGE_TOKENS), int(rng.integers(1, 12)))))
    else:  # byte flips (may make it invalid UTF-8)
        return mutate_bytes("\n".join(lines).encode(), np.random.default_rng(int(rng.integers(0, 2**31))))
    return "\n".join(lines).encode()


class Hang(Exception):
    pass


@contextmanager
def time_bound(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_consistent(scene) -> None:
    n = len(scene.image_names)
    c = scene.cameras
    assert n > 0 and len(c) == n == len(scene.image_paths) == len(scene.mask_paths) == len(scene.distortions)
    for t in (c.R, c.T, c.fx, c.fy, c.cx, c.cy):
        assert torch.isfinite(t).all()
    eye = torch.eye(3).expand(n, 3, 3)
    assert torch.allclose(c.R @ c.R.transpose(1, 2), eye, atol=1e-4)
    assert (c.fx > 0).all() and (c.fy > 0).all() and (c.width > 0).all() and (c.height > 0).all()
    assert len(set(scene.image_names)) == n and all(os.path.isfile(p) for p in scene.image_paths)
    ids = scene.train_ids + scene.val_ids + scene.test_ids
    assert all(0 <= i < n for i in ids) and scene.train_ids
    assert scene.points_xyz.ndim == 2 and scene.points_xyz.shape[1] == 3 and len(scene.points_xyz) > 0
    assert np.isfinite(scene.points_xyz).all() and scene.points_rgb.shape == scene.points_xyz.shape
    assert scene.points_rgb.dtype == np.uint8 and np.isfinite(scene.extent) and scene.extent > 0
    assert c.appearance_id.min() >= 0 and c.appearance_id.max() < len(scene.appearance_group_names)


def _bases(tmp: Path):
    """(name, scene folder) for each base model: synthetic with distorted cameras, and the statue."""
    out = []
    for fmt in ("bin", "txt"):
        root = tmp / f"synthetic_{fmt}"
        make_colmap_scene(root, fmt=fmt, n_images=6, models=("PINHOLE", "SIMPLE_RADIAL", "OPENCV"), sizes=((48, 32),) * 3)
        out.append((f"synthetic_{fmt}", root))
    statue = SHARED_DATA / STATUE
    if statue.exists():
        for fmt, sub in (("bin", "sparse/0"), ("txt", "sparse_txt/0")):
            root = tmp / f"statue_{fmt}"
            shutil.copytree(statue / sub, root / "sparse" / "0")
            (root / "images").symlink_to(statue / "images")
            out.append((f"statue_{fmt}", root))
    return out


def test_fuzz_colmap_models(tmp_path):
    bases = _bases(tmp_path / "bases")
    per_file = -(-TOTAL_CASES // (3 * len(bases)))  # without the statue, more cases per synthetic file
    rng = np.random.default_rng(20240601)
    outcomes = {"loaded": 0, "DatasetError": 0}
    cases = 0
    for name, base in bases:
        for f in sorted((base / "sparse" / "0").iterdir()):
            original = f.read_bytes()
            for case in range(per_file):
                work = tmp_path / "case"
                if work.exists():
                    shutil.rmtree(work)
                work.mkdir()
                (work / "images").symlink_to((base / "images").resolve())
                shutil.copytree(base / "sparse", work / "sparse")
                mutated = mutate_bytes(original, rng) if f.suffix == ".bin" else mutate_text(original.decode(), rng)
                (work / "sparse" / "0" / f.name).write_bytes(mutated)
                label = f"{name}/{f.name} case {case}"
                try:
                    with time_bound(TIME_BOUND_S):
                        scene = load_scene(work)
                except DatasetError as e:
                    msg = str(e)
                    assert "\n" not in msg and str(work) in msg, f"{label}: {msg}"
                    outcomes["DatasetError"] += 1
                except Hang:
                    pytest.fail(f"{label}: parser did not answer within {TIME_BOUND_S} s")
                except Exception as e:  # noqa: BLE001
                    (tmp_path / "failing").mkdir(exist_ok=True)
                    shutil.copytree(work, tmp_path / "failing" / f"{name}_{f.stem}_{case}", symlinks=True)
                    pytest.fail(f"{label}: {type(e).__name__}: {e} (copy in {tmp_path / 'failing'})")
                else:
                    check_consistent(scene)
                    if name.startswith("synthetic"):  # small images: decode one, distortion included
                        i = len(scene) - 1
                        d = load_image(scene, i)
                        assert d.image.shape == (int(scene.cameras.height[i]), int(scene.cameras.width[i]), 3)
                    outcomes["loaded"] += 1
                cases += 1
    assert cases >= 500, cases
    # both outcomes occur: the mutations are neither all fatal nor all harmless
    assert outcomes["loaded"] > 20 and outcomes["DatasetError"] > 100, outcomes
    print(f"{cases} mutated models: {outcomes}")
