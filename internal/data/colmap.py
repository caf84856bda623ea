"""COLMAP scene folder -> Scene.

    SCENE/images/...            the photos (`image_dir`), names as in the model (may hold sub-folders)
    SCENE/images_N/...          optional, the same photos down-scaled by N (3DGS / nerfstudio layout)
    SCENE/sparse/0/ or sparse/  cameras, images, points3D as .bin or .txt
    SCENE/NAME.json             optional appearance groups {group: [image names]}

Images are sorted by name (as the original 3DGS), so `experiment` holds out the same images as it.
PINHOLE and SIMPLE_PINHOLE are used as they are; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV images
are undistorted on load to a pinhole camera with the same focal length, principal point and size,
and the pixels that the distorted photo does not cover are masked out. Fisheye and other models are
refused with the command that undistorts them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from .cameras import Cameras
from .colmap_model import ColmapCamera, ColmapModel, qvec_to_rotmat, read_model
from .errors import DatasetError
from .groups import read_group_file
from .images import read_size
from .masks import find_masks
from .params import ColmapParams
from .scene import Distortion, Scene, scene_extent

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
UNDISTORTED_ON_LOAD = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")


def find_sparse_dir(path: Path, sparse_dir: Optional[str] = None) -> Path:
    """`sparse_dir` if given, else `sparse/0` when it holds a model, else `sparse`."""
    if sparse_dir is not None:
        p = path / sparse_dir
        if not p.is_dir():
            raise DatasetError(f"{p}: model folder does not exist; fix --data.params.colmap.sparse_dir (relative to {path})")
        return p
    for p in (path / "sparse" / "0", path / "sparse"):
        if any((p / f"cameras.{e}").is_file() for e in ("bin", "txt")):
            return p
    if (path / "sparse").is_dir():
        subs = sorted(q.name for q in (path / "sparse").iterdir() if q.is_dir())
        hint = f" (it has sub-models {', '.join(subs)}: pick one with --data.params.colmap.sparse_dir sparse/N)" if subs else ""
        raise DatasetError(f"{path / 'sparse'}: no cameras.bin or cameras.txt in sparse/0 or sparse{hint}; run COLMAP's mapper, or point --data.params.colmap.sparse_dir at the model")
    raise DatasetError(f"{path}: no sparse/0 or sparse folder with a COLMAP model; run COLMAP (feature_extractor, matcher, mapper) first")


def _distortion(cam: ColmapCamera) -> Optional[Distortion]:
    p = cam.params
    m = cam.model
    if m == "SIMPLE_RADIAL":
        return Distortion(m, p[0], p[0], p[1], p[2], (p[3], 0, 0, 0, 0, 0, 0, 0))
    if m == "RADIAL":
        return Distortion(m, p[0], p[0], p[1], p[2], (p[3], p[4], 0, 0, 0, 0, 0, 0))
    if m == "OPENCV":
        return Distortion(m, *p[:4], (*p[4:8], 0, 0, 0, 0))
    if m == "FULL_OPENCV":
        return Distortion(m, *p[:4], tuple(p[4:12]))
    return None


def _intrinsics(cam: ColmapCamera) -> tuple[float, float, float, float]:
    p = cam.params
    if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return p[0], p[0], p[1], p[2]
    return p[0], p[1], p[2], p[3]


def _check_model_supported(model: ColmapModel) -> None:
    for cam in model.cameras.values():
        if cam.model not in PINHOLE_MODELS + UNDISTORTED_ON_LOAD:
            raise DatasetError(
                f"{cam.where}: camera {cam.id} has model {cam.model}, which is not supported "
                f"(supported: {', '.join(PINHOLE_MODELS + UNDISTORTED_ON_LOAD)}); undistort the images first: "
                "`colmap image_undistorter --image_path SCENE/images --input_path SCENE/sparse/0 --output_path OUT --output_type COLMAP` "
                "and train on OUT"
            )


def appearance_groups(path: Path, name: Optional[str], image_names: list[str], camera_ids: list[int]) -> tuple[list[int], list[str]]:
    """(group id per image, group names). Default: one group per COLMAP camera, in camera-id order."""
    if name is None:
        cams = sorted(set(camera_ids))
        index = {c: k for k, c in enumerate(cams)}
        return [index[c] for c in camera_ids], [f"camera_{c}" for c in cams]
    return read_group_file(path, name, image_names, "--data.params.colmap.appearance_groups")


def load_colmap(path: str | os.PathLike, params: ColmapParams = ColmapParams()) -> Scene:
    path = Path(path)
    if params.down_sample_factor < 1 or int(params.down_sample_factor) != params.down_sample_factor:
        raise DatasetError(f"{path}: down_sample_factor {params.down_sample_factor} must be an integer >= 1; fix --data.params.colmap.down_sample_factor")
    if params.split_mode not in ("experiment", "reconstruction"):
        raise DatasetError(f"{path}: split_mode {params.split_mode!r} must be 'experiment' or 'reconstruction'; fix --data.params.colmap.split_mode")
    if params.eval_step < 1:
        raise DatasetError(f"{path}: eval_step {params.eval_step} must be >= 1; fix --data.params.colmap.eval_step")
    sparse = find_sparse_dir(path, params.sparse_dir)
    model = read_model(sparse)
    _check_model_supported(model)
    images_file = model.files["images"]
    if not model.images:
        raise DatasetError(f"{images_file}: the model has no registered images; the reconstruction failed: re-run COLMAP's mapper")
    if len(model.points_xyz) == 0:
        raise DatasetError(f"{model.files['points3D']}: the model has no 3D points, which 3DGS needs to start from; run `colmap point_triangulator` on it")

    image_dir = path / params.image_dir
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image folder does not exist; put the photos there or set --data.params.colmap.image_dir")
    factor = int(params.down_sample_factor)
    pre_scaled = image_dir.parent / f"{image_dir.name}_{factor}" if factor > 1 else None
    read_dir = pre_scaled if pre_scaled is not None and pre_scaled.is_dir() else image_dir

    images = sorted(model.images, key=lambda im: im.name)
    n = len(images)
    paths = [str(read_dir / im.name) for im in images]
    missing = [k for k, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        im = images[missing[0]]
        more = f" (and {len(missing) - 1} more of the {n} images)" if len(missing) > 1 else ""
        fix = f"delete {read_dir} to resize {image_dir} on load, or regenerate it" if read_dir == pre_scaled else f"restore it, or set --data.params.colmap.image_dir to the folder the model was built from"
        raise DatasetError(f"{paths[missing[0]]}: image {im.id} listed in {images_file} does not exist{more}; {fix}")

    R = np.empty((n, 3, 3))
    T = np.empty((n, 3))
    K = np.empty((n, 4))
    W = np.empty(n, np.int64)
    H = np.empty(n, np.int64)
    file_sizes = []
    distortions: list[Optional[Distortion]] = []
    for k, im in enumerate(images):
        cam = model.cameras[im.camera_id]
        R[k] = qvec_to_rotmat(im.qvec)
        T[k] = im.tvec
        fx, fy, cx, cy = _intrinsics(cam)
        w, h = read_size(paths[k])
        file_sizes.append((w, h))
        if read_dir == pre_scaled:
            # Written by another tool that resized edge to edge (rounding the size its own way).
            if abs(w - cam.width / factor) > 1 or abs(h - cam.height / factor) > 1:
                raise DatasetError(f"{paths[k]}: is {w}x{h} but camera {cam.id} in {model.files['cameras']} is {cam.width}x{cam.height}, so {read_dir.name} should hold {cam.width}/{factor} x {cam.height}/{factor} images; regenerate {read_dir} or delete it to resize on load")
            sx, sy = w / cam.width, h / cam.height
            tw, th = w, h
        else:
            if (w, h) != (cam.width, cam.height):
                raise DatasetError(f"{paths[k]}: is {w}x{h} but camera {cam.id} in {model.files['cameras']} (used by image {im.id}) is {cam.width}x{cam.height}; use the images the model was built from (for down-scaled copies: put them in {image_dir.name}_N and set --data.params.colmap.down_sample_factor N)")
            # Box down-scaling of the top-left (w//f*f, h//f*f) pixels: exactly 1/f (see Cameras).
            sx = sy = 1.0 / factor
            tw, th = w // factor, h // factor
            if tw < 1 or th < 1:
                raise DatasetError(f"{paths[k]}: {w}x{h} is too small for down_sample_factor {factor}; lower --data.params.colmap.down_sample_factor")
        K[k] = (fx * sx, fy * sy, cx * sx, cy * sy)
        W[k], H[k] = tw, th
        d = _distortion(cam)
        if d is not None:
            d = Distortion(d.model, d.fx * sx, d.fy * sy, d.cx * sx, d.cy * sy, tuple(float(v) for v in d.k))
        distortions.append(d)

    names = [im.name for im in images]
    group_of, group_names = appearance_groups(path, params.appearance_groups, names, [im.camera_id for im in images])
    cameras = Cameras.from_numpy(R, T, K[:, 0], K[:, 1], K[:, 2], K[:, 3], W, H, group_of)

    held_out = [k for k in range(n) if k % params.eval_step == 0] if n > 1 else []
    if params.split_mode == "experiment":
        held = set(held_out)
        train_ids = [k for k in range(n) if k not in held]
    else:
        train_ids = list(range(n))
    centers = -np.einsum("nji,nj->ni", R, T)  # C = -R^T t
    mask_paths = find_masks(path, params.mask_dir, names, paths, file_sizes, list(zip(W.tolist(), H.tolist())), "colmap")

    return Scene(
        cameras=cameras,
        image_names=names,
        image_paths=paths,
        mask_paths=mask_paths,
        points_xyz=model.points_xyz.astype(np.float32),
        points_rgb=model.points_rgb.copy(),
        extent=scene_extent(centers[train_ids]),
        train_ids=train_ids,
        val_ids=list(held_out),
        test_ids=list(held_out),
        appearance_group_names=group_names,
        kind="colmap",
        background=(0.0, 0.0, 0.0),
        path=str(path),
        file_sizes=file_sizes,
        distortions=distortions,
        composite_alpha=False,
    )
