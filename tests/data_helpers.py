"""Helpers for the data tests: where the real scenes are, and writers of small synthetic scenes.

The COLMAP writer is written from the format description (see internal/data/colmap_model.py) and
is checked against pycolmap in test_data_colmap.py, so it is an independent oracle for the reader.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))
STATUE = "colmap_statue_23"
LEGO_400 = "nerf_synthetic_lego_400"
LEGO_800 = "nerf_synthetic_lego_800_train"


def shared(*parts: str) -> Path:
    """A path in ../shared/data (or $GS_SHARED_DATA), or skip the test saying why."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not found: {p} (set GS_SHARED_DATA to the shared/data folder)")
    return p


# ---------------------------------------------------------------------------------------------
# COLMAP models

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
             "OPENCV_FISHEYE": 5, "FULL_OPENCV": 6}


@dataclass
class Cam:
    id: int
    model: str
    width: int
    height: int
    params: list


@dataclass
class Img:
    id: int
    qvec: tuple  # w x y z
    tvec: tuple
    camera_id: int
    name: str
    points2d: list = field(default_factory=list)  # (x, y, point3D_id)


@dataclass
class Pt:
    id: int
    xyz: tuple
    rgb: tuple
    error: float
    track: list  # (image_id, point2D_idx)


def write_model_bin(d: Path, cams: list[Cam], imgs: list[Img], pts: list[Pt]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for c in cams:
            f.write(struct.pack("<IiQQ", c.id, MODEL_IDS.get(c.model, c.model if isinstance(c.model, int) else -1), c.width, c.height))
            f.write(struct.pack(f"<{len(c.params)}d", *c.params))
    with open(d / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(imgs)))
        for im in imgs:
            f.write(struct.pack("<I7dI", im.id, *im.qvec, *im.tvec, im.camera_id))
            f.write(im.name.encode() + b"\0")
            f.write(struct.pack("<Q", len(im.points2d)))
            for x, y, pid in im.points2d:
                f.write(struct.pack("<ddq", x, y, pid))
    with open(d / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(pts)))
        for p in pts:
            f.write(struct.pack("<Q3d3BdQ", p.id, *p.xyz, *p.rgb, p.error, len(p.track)))
            for iid, idx in p.track:
                f.write(struct.pack("<II", iid, idx))


def write_model_txt(d: Path, cams: list[Cam], imgs: list[Img], pts: list[Pt]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    r = repr
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cams)}"]
    lines += [" ".join([str(c.id), str(c.model), str(c.width), str(c.height), *map(r, map(float, c.params))]) for c in cams]
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(imgs)}, mean observations per image: 1"]
    for im in imgs:
        lines.append(" ".join([str(im.id), *map(r, map(float, im.qvec)), *map(r, map(float, im.tvec)), str(im.camera_id), im.name]))
        lines.append(" ".join(f"{float(x)!r} {float(y)!r} {int(p)}" for x, y, p in im.points2d))
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(pts)}, mean track length: 1"]
    for p in pts:
        lines.append(" ".join([str(p.id), *map(r, map(float, p.xyz)), *map(str, p.rgb), r(float(p.error)), *[f"{a} {b}" for a, b in p.track]]))
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_model(d: Path, cams, imgs, pts, fmt: str = "bin") -> None:
    (write_model_bin if fmt == "bin" else write_model_txt)(Path(d), cams, imgs, pts)


def look_at_qt(center, target=(0.0, 0.0, 0.0)):
    """(qvec wxyz, tvec) of an OpenCV camera at `center` looking at `target` (world z up)."""
    c = np.asarray(center, float)
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world = world-to-camera rotation
    t = -R @ c
    return rotmat_to_qvec(R), tuple(t)


def rotmat_to_qvec(R) -> tuple:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()  # scipy: scalar last
    return (w, x, y, z)


def synthetic_model(n_images=6, models=("PINHOLE",), sizes=((64, 48),), n_points=40, seed=0):
    """Cameras (one per model/size combination, cycled over images), images around the origin, points."""
    rng = np.random.default_rng(seed)
    cams = []
    for k, (model, (w, h)) in enumerate(zip(models, sizes) if len(models) == len(sizes) else [(m, sizes[0]) for m in models]):
        f = 1.2 * w
        p = {
            "SIMPLE_PINHOLE": [f, w / 2, h / 2],
            "PINHOLE": [f, f * 1.01, w / 2, h / 2],
            "SIMPLE_RADIAL": [f, w / 2, h / 2, -0.05],
            "RADIAL": [f, w / 2, h / 2, -0.05, 0.01],
            "OPENCV": [f, f, w / 2, h / 2, -0.05, 0.01, 0.001, -0.001],
            "FULL_OPENCV": [f, f, w / 2, h / 2, -0.05, 0.01, 0.001, -0.001, 0.0, 0.0, 0.0, 0.0],
            "OPENCV_FISHEYE": [f, f, w / 2, h / 2, 0.01, 0.0, 0.0, 0.0],
        }[model]
        cams.append(Cam(k + 1, model, w, h, p))
    imgs = []
    for i in range(n_images):
        a = 2 * np.pi * i / n_images
        q, t = look_at_qt((4 * np.cos(a), 4 * np.sin(a), 1.0 + 0.1 * i))
        cam = cams[i % len(cams)]
        pts2d = [(float(rng.uniform(0, cam.width)), float(rng.uniform(0, cam.height)), int(rng.integers(-1, n_points))) for _ in range(5)]
        imgs.append(Img(i + 1, q, t, cam.id, f"img_{i:03d}.png", pts2d))
    pts = [Pt(j, tuple(rng.uniform(-1, 1, 3)), tuple(int(v) for v in rng.integers(0, 256, 3)), float(rng.uniform(0, 2)),
              [(int(rng.integers(1, n_images + 1)), int(rng.integers(0, 5))) for _ in range(3)]) for j in range(n_points)]
    return cams, imgs, pts


def pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-symmetric uint8 RGB test image."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / max(w, 1) * 6.1 + seed)
    g = 127.5 + 127.5 * np.cos(y / max(h, 1) * 4.3 + 0.5 * seed)
    b = 255.0 * (x + 2 * y) / (w + 2 * h)
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


def make_colmap_scene(root: Path, fmt="bin", n_images=6, models=("PINHOLE",), sizes=((64, 48),), sparse="sparse/0", seed=0):
    """A COLMAP scene folder with PNG images of the cameras' sizes; returns (cams, imgs, pts)."""
    cams, imgs, pts = synthetic_model(n_images, models, sizes, seed=seed)
    write_model(root / sparse, cams, imgs, pts, fmt)
    (root / "images").mkdir(parents=True, exist_ok=True)
    by_id = {c.id: c for c in cams}
    for k, im in enumerate(imgs):
        c = by_id[im.camera_id]
        Image.fromarray(pattern(c.width, c.height, k)).save(root / "images" / im.name)
    return cams, imgs, pts


def copy_statue(dst: Path, sparse_from: str = "sparse/0") -> Path:
    """A writable statue scene: the model copied to sparse/0, images/ symlinked."""
    src = shared(STATUE)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / sparse_from, dst / "sparse" / "0")
    os.symlink(src / "images", dst / "images")
    return dst


# ---------------------------------------------------------------------------------------------
# Blender


def make_blender_scene(root: Path, n=(4, 2, 2), size=(40, 30), angle_x=0.7, extra=None, rgba=True):
    """A Blender scene with cameras on a circle looking at the origin (OpenGL camera-to-world)."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, count in zip(("train", "val", "test"), n):
        if count == 0:
            continue
        (root / split).mkdir(exist_ok=True)
        frames = []
        for i in range(count):
            a = 2 * np.pi * k / sum(n)
            c = np.array([3 * np.cos(a), 3 * np.sin(a), 1.5])
            back = c / np.linalg.norm(c)  # OpenGL camera z points backwards, away from the target
            right = np.cross([0.0, 0.0, 1.0], back)
            right /= np.linalg.norm(right)
            up = np.cross(back, right)
            m = np.eye(4)
            m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, c
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": m.tolist()})
            rgb = pattern(*size, k)
            if rgba:
                alpha = np.zeros(size[::-1], np.uint8)
                alpha[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = 255
                alpha[0, 0] = 128
                Image.fromarray(np.dstack([rgb, alpha])).save(root / split / f"r_{i}.png")
            else:
                Image.fromarray(rgb).save(root / split / f"r_{i}.png")
            k += 1
        data = {"camera_angle_x": angle_x, "frames": frames, **(extra or {})}
        (root / f"transforms_{split}.json").write_text(json.dumps(data, indent=1))
    return root
