"""Typed dataset options. LightningCLI (jsonargparse) turns these into YAML and flags such as
`--data.params.colmap.mask_dir MASKS` or `--data.params.train_max_num_images_to_cache 1024`.

Kept free of Lightning so that `load_scene` can be used without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class ColmapParams:
    image_dir: str = "images"
    """Folder of the images, relative to the scene folder (or absolute)."""
    down_sample_factor: int = 1
    """Integer factor. Reads `<image_dir>_<factor>` when that folder exists, else resizes on load."""
    split_mode: Literal["experiment", "reconstruction"] = "experiment"
    """experiment: every `eval_step`-th image (sorted by name) is held out for val/test.
    reconstruction: train on all images; val/test still use every `eval_step`-th image."""
    eval_step: int = 8
    mask_dir: Optional[str] = None
    """Folder of masks: the mask of `a.jpg` is `a.jpg.png` or `a.png`; one channel, 0 = ignore pixel."""
    appearance_groups: Optional[str] = None
    """NAME of `NAME.json` in the scene folder, `{group: [image names]}`. Default: one group per camera."""
    sparse_dir: Optional[str] = None
    """Model folder, relative to the scene folder. Default: `sparse/0`, else `sparse`."""


@dataclass
class BlenderParams:
    white_background: bool = True
    """Composite RGBA images on white (True) or black (False)."""
    random_points: int = 100_000
    """Initial points, uniform in [-1.3, 1.3]^3, as the original 3DGS."""
    mask_dir: Optional[str] = None
    down_sample_factor: int = 1
    appearance_groups: Optional[str] = None
    """NAME of `NAME.json` in the scene folder, `{group: [image names]}` with names as `train/r_0.png`.
    Default: one group for every image."""


@dataclass
class DataParams:
    colmap: ColmapParams = field(default_factory=ColmapParams)
    blender: BlenderParams = field(default_factory=BlenderParams)
    train_max_num_images_to_cache: int = -1
    """-1: keep every decoded image in RAM; 0: decode on every access; N: at most N resident
    plus one chunk of N being decoded by a background thread."""
    val_max_num_images_to_cache: int = -1
    test_max_num_images_to_cache: int = -1
    seed: Optional[int] = None
    """Seed of the per-epoch shuffle. None: the seed given to `seed_everything` (PL_GLOBAL_SEED), else 0."""
    decode_threads: int = 2
    """Threads decoding images in the background (PIL and torch release the GIL while decoding)."""
