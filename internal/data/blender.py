"""Blender / NeRF-synthetic scene folder -> Scene.

    SCENE/transforms_train.json   required; transforms_val.json / transforms_test.json optional
    SCENE/train/r_0.png ...       `file_path` of each frame, relative to the JSON (".png" added when absent)

Intrinsics: `fl_x`/`fl_y` when present, else from `camera_angle_x` (and `camera_angle_y`);
`cx`, `cy` default to the image centre, `w`, `h` to the image file's size; each may also be given per
frame. `transform_matrix` is camera-to-world in OpenGL axes (y up, z backwards); it is converted to
OpenCV axes by flipping the camera's y and z. Missing val uses test and missing test uses val.
Appearance groups: one for every image, or SCENE/NAME.json (`appearance_groups`, internal/data/groups.py)
with the image names as `train/r_0.png`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .cameras import Cameras
from .errors import DatasetError
from .groups import read_group_file
from .images import read_size
from .masks import find_masks
from .params import BlenderParams
from .scene import Scene, scene_extent

RIGID_TOLERANCE = 5e-3  # max |R^T R - I| of a camera-to-world rotation


def _read_json(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{file}: cannot be read ({e}); replace the file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{file}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno}); fix or regenerate the file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{file}: must be a JSON object with 'camera_angle_x' and 'frames'; this is not a Blender/NeRF transforms file")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{file}: has no 'frames' (a non-empty list of {{file_path, transform_matrix}}); the file is incomplete: regenerate it")
    return data


def _number(file: Path, where: str, key: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise DatasetError(f"{file}: {where}'{key}' is {value!r}, not a {'positive ' if positive else ''}finite number; fix the file")
    return float(value)


def _pose(file: Path, k: int, frame: dict) -> np.ndarray:
    """World-to-camera 4x4 in OpenCV axes from a frame's OpenGL camera-to-world."""
    m = frame.get("transform_matrix")
    where = f"frame {k} ({frame.get('file_path')!r})"
    try:
        c2w = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.zeros(0)
    if c2w.shape not in ((4, 4), (3, 4)):
        raise DatasetError(f"{file}: {where} has no 4x4 'transform_matrix' (got {type(m).__name__} of shape {getattr(c2w, 'shape', None)}); fix the file")
    if not np.all(np.isfinite(c2w)):
        raise DatasetError(f"{file}: {where} has a non-finite transform_matrix (NaN or inf); the pose is corrupt: fix or drop the frame")
    if c2w.shape == (4, 4) and np.abs(c2w[3] - (0, 0, 0, 1)).max() > 1e-6:
        raise DatasetError(f"{file}: {where} transform_matrix has last row {c2w[3].tolist()}, not [0, 0, 0, 1]; it is not a camera pose: fix the file")
    R = c2w[:3, :3]
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > RIGID_TOLERANCE or np.linalg.det(R) <= 0:
        raise DatasetError(f"{file}: {where} transform_matrix is not a rigid transform (rotation part off orthonormal by {err:.3g}, det {np.linalg.det(R):.3g}); scaled or sheared poses are not supported: remove the scale from the poses")
    u, _, vt = np.linalg.svd(R)  # re-orthonormalise the float32-printed rotations
    R = u @ vt
    R = R * np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV: flip the camera's y and z axes
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ c2w[:3, 3]
    return w2c


def _image_path(json_dir: Path, file_path: str) -> Path:
    p = json_dir / file_path
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".webp") or p.is_file():
        return p
    return p.with_name(p.name + ".png")


def load_blender(path: str | os.PathLike, params: BlenderParams = BlenderParams(), seed: int = 0) -> Scene:
    path = Path(path)
    factor = params.down_sample_factor
    if factor < 1 or int(factor) != factor:
        raise DatasetError(f"{path}: down_sample_factor {factor} must be an integer >= 1; fix --data.params.blender.down_sample_factor")
    factor = int(factor)
    if params.random_points < 1:
        raise DatasetError(f"{path}: random_points {params.random_points} must be >= 1; fix --data.params.blender.random_points")
    train_file = path / "transforms_train.json"
    if not train_file.is_file():
        raise DatasetError(f"{train_file}: does not exist; a Blender/NeRF-synthetic scene needs transforms_train.json")

    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    names, paths, file_sizes, w2cs, K, WH = [], [], [], [], [], []
    for split in ("train", "val", "test"):
        file = path / f"transforms_{split}.json"
        if not file.is_file():
            continue
        data = _read_json(file)
        top = {k: data[k] for k in ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h") if k in data}
        if "camera_angle_x" not in top and "fl_x" not in top:
            raise DatasetError(f"{file}: has neither 'camera_angle_x' nor 'fl_x'; the focal length is needed: add it")
        for k, frame in enumerate(data["frames"]):
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str) or not frame["file_path"]:
                raise DatasetError(f"{file}: frame {k} has no 'file_path' string; fix the file")
            w2c = _pose(file, k, frame)
            ipath = _image_path(file.parent, frame["file_path"])
            if not ipath.is_file():
                raise DatasetError(f"{ipath}: image of frame {k} in {file} does not exist; restore it or remove the frame")
            fw, fh = read_size(str(ipath))
            intr = {**top, **{key: frame[key] for key in top.keys() | {"fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y"} if key in frame}}
            where = f"frame {k}: " if any(key in frame for key in ("fl_x", "fl_y", "cx", "cy", "w", "h")) else ""
            w = int(_number(file, where, "w", intr["w"], True)) if "w" in intr else fw
            h = int(_number(file, where, "h", intr["h"], True)) if "h" in intr else fh
            if (w, h) != (fw, fh):
                raise DatasetError(f"{ipath}: is {fw}x{fh} but {file} says w={w}, h={h}; fix 'w'/'h' or use the matching images")
            if "fl_x" in intr:
                fx = _number(file, where, "fl_x", intr["fl_x"], True)
            else:
                ax = _number(file, where, "camera_angle_x", intr["camera_angle_x"], True)
                if ax >= math.pi:
                    raise DatasetError(f"{file}: camera_angle_x {ax} is not below pi radians; it must be the horizontal field of view in radians")
                fx = 0.5 * w / math.tan(0.5 * ax)
            if "fl_y" in intr:
                fy = _number(file, where, "fl_y", intr["fl_y"], True)
            elif "camera_angle_y" in intr:
                fy = 0.5 * h / math.tan(0.5 * _number(file, where, "camera_angle_y", intr["camera_angle_y"], True))
            else:
                fy = fx
            cx = _number(file, where, "cx", intr["cx"]) if "cx" in intr else w / 2
            cy = _number(file, where, "cy", intr["cy"]) if "cy" in intr else h / 2
            if w // factor < 1 or h // factor < 1:
                raise DatasetError(f"{ipath}: {w}x{h} is too small for down_sample_factor {factor}; lower --data.params.blender.down_sample_factor")
            splits[split].append(len(names))
            try:
                names.append(ipath.relative_to(path).as_posix())
            except ValueError:
                names.append(ipath.as_posix())
            paths.append(str(ipath))
            file_sizes.append((fw, fh))
            w2cs.append(w2c)
            # Box down-scaling keeps the top-left (w//f*f) pixels, so intrinsics scale by exactly 1/f.
            K.append((fx / factor, fy / factor, cx / factor, cy / factor))
            WH.append((w // factor, h // factor))

    if not splits["val"]:
        splits["val"] = list(splits["test"])
    if not splits["test"]:
        splits["test"] = list(splits["val"])
    w2c = np.stack(w2cs)
    K = np.asarray(K)
    WH = np.asarray(WH, dtype=np.int64)
    n = len(names)
    if params.appearance_groups is None:
        group_of, group_names = [0] * n, ["default"]
    else:
        group_of, group_names = read_group_file(path, params.appearance_groups, names, "--data.params.blender.appearance_groups")
    cameras = Cameras.from_numpy(w2c[:, :3, :3], w2c[:, :3, 3], K[:, 0], K[:, 1], K[:, 2], K[:, 3], WH[:, 0], WH[:, 1], np.asarray(group_of, np.int64))
    centers = -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3])
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1.3, 1.3, size=(params.random_points, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(params.random_points, 3), dtype=np.uint8)
    bg = (1.0, 1.0, 1.0) if params.white_background else (0.0, 0.0, 0.0)
    mask_paths = find_masks(path, params.mask_dir, names, paths, file_sizes, [tuple(x) for x in WH.tolist()], "blender")
    return Scene(
        cameras=cameras,
        image_names=names,
        image_paths=paths,
        mask_paths=mask_paths,
        points_xyz=xyz,
        points_rgb=rgb,
        extent=scene_extent(centers[splits["train"]]),
        train_ids=splits["train"],
        val_ids=splits["val"],
        test_ids=splits["test"],
        appearance_group_names=group_names,
        kind="blender",
        background=bg,
        path=str(path),
        file_sizes=file_sizes,
        distortions=[None] * n,
        composite_alpha=True,
        random_points=True,
    )
