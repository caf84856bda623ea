"""Datasets: COLMAP and Blender/NeRF-synthetic scenes, and the LightningDataModule over them.

    from internal.data import load_scene, DataParams
    scene = load_scene("data/garden")            # kind detected from the folder
    scene.cameras, scene.points_xyz, scene.extent, scene.train_ids

`DataModule` and `Batch` (which import Lightning) are loaded on first use, so that importing this
package stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .cameras import Cameras
from .errors import DatasetError
from .params import BlenderParams, ColmapParams, DataParams
from .scene import Distortion, Scene

__all__ = [
    "BlenderParams", "Cameras", "ColmapParams", "DataModule", "DataParams", "DatasetError", "Batch",
    "Distortion", "Scene", "detect_kind", "load_scene",
]


def detect_kind(path: str | os.PathLike, params: Optional[DataParams] = None) -> str:
    """'blender' when the folder has transforms_train.json, 'colmap' when it has a sparse model
    (or `params.colmap.sparse_dir` is set); otherwise a DatasetError saying what was expected."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: does not exist; --data.path must be a scene folder (COLMAP: images/ + sparse/; Blender: transforms_train.json)")
    if not p.is_dir():
        raise DatasetError(f"{p}: is a file; --data.path must be the scene folder that holds it")
    if (p / "transforms_train.json").exists():
        return "blender"
    if (p / "sparse").is_dir() or (params is not None and params.colmap.sparse_dir is not None):
        return "colmap"
    if any((p / f"cameras.{e}").is_file() for e in ("bin", "txt")):
        raise DatasetError(f"{p}: is a COLMAP model folder; --data.path must be the scene folder above it (the one holding images/ and sparse/), or set --data.params.colmap.sparse_dir")
    if (p / "transforms.json").is_file():
        raise DatasetError(f"{p / 'transforms.json'}: single-file (nerfstudio / instant-ngp) transforms are not supported; split the frames into transforms_train.json (and _val/_test), or give the COLMAP scene it came from")
    raise DatasetError(f"{p}: neither a COLMAP scene (sparse/0 or sparse with cameras.bin|txt) nor a Blender scene (transforms_train.json); check --data.path")


def load_scene(path: str | os.PathLike, params: Optional[DataParams] = None) -> Scene:
    """Parse the scene at `path` (COLMAP or Blender, detected). Raises DatasetError on bad input."""
    params = params if params is not None else DataParams()
    kind = detect_kind(path, params)
    if kind == "blender":
        from .blender import load_blender

        seed = params.seed if params.seed is not None else 0
        return load_blender(path, params.blender, seed=seed)
    from .colmap import load_colmap

    return load_colmap(path, params.colmap)


def __getattr__(name: str):
    if name in ("DataModule", "Batch", "ImageDataset"):
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
