"""A varied-appearance copy of a Blender scene: each image group gets its own deterministic exposure,
white balance, gamma and saturation, as photos of one place taken with auto-exposure, several cameras
or on several days would. The appearance model's tests and bench/appearance.py train on it.

    from internal.data.variation import make_varied_blender_scene
    looks = make_varied_blender_scene(SRC, DST, num_groups=4, seed=0)   # DST/appearance_groups.json too

Image k of the scene (its distinct images: train, val, test in the loader's order) is in group
k mod num_groups, so the groups are spread over the views and every split has every group it can. The look is applied to the RGB of
the RGBA images (the alpha, hence the background the loader composites, is untouched):

    c = clip(c * exposure * white_balance, 0, 1) ** gamma;   c = clip(lum + saturation * (c - lum), 0, 1)

with lum = 0.299 r + 0.587 g + 0.114 b, the result rounded to 8 bits.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .groups import DEFAULT_NAME, write_groups


@dataclass(frozen=True)
class Look:
    exposure: float
    white_balance: tuple[float, float, float]
    gamma: float
    saturation: float

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) float in [0,1] -> the same image with this look, float in [0,1]."""
        c = np.clip(rgb * self.exposure * np.asarray(self.white_balance), 0.0, 1.0) ** self.gamma
        lum = (c * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
        return np.clip(lum + self.saturation * (c - lum), 0.0, 1.0)


def draw_looks(num_groups: int, seed: int = 0, strength: float = 1.0) -> list[Look]:
    """`num_groups` looks; `strength` scales how far they go from neutral (1: exposure x0.55..1.8,
    white balance gains 0.75..1.25, gamma 0.7..1.45, saturation 0.35..1.6)."""
    rng = np.random.default_rng(seed)
    looks = []
    for _ in range(num_groups):
        ev = rng.uniform(-0.85, 0.85) * strength
        wb = np.exp(rng.uniform(-0.28, 0.22, size=3) * strength)
        gamma = float(np.exp(rng.uniform(-0.36, 0.37) * strength))
        sat = float(1.0 + rng.uniform(-0.65, 0.6) * strength)
        looks.append(Look(float(2.0 ** ev), tuple(float(v) for v in wb), gamma, sat))
    return looks


def make_varied_blender_scene(src: str | os.PathLike, dst: str | os.PathLike, num_groups: int = 4, seed: int = 0,
                              strength: float = 1.0, group_file: str = DEFAULT_NAME) -> list[Look]:
    """Write a copy of the Blender scene `src` into `dst` with per-group looks and `dst/<group_file>.json`
    (groups `look_0`, `look_1`, ...). Returns the looks. `dst` must not exist or be empty."""
    from PIL import Image

    from . import load_scene
    from .params import BlenderParams, DataParams

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: exists and is not empty; choose a new folder for the varied scene")
    scene = load_scene(src, DataParams(blender=BlenderParams(random_points=1)))
    if scene.kind != "blender":
        raise DatasetError(f"{src}: is a {scene.kind} scene; make_varied_blender_scene needs a Blender scene")
    looks = draw_looks(num_groups, seed, strength)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("transforms_*.json"):
        shutil.copyfile(f, dst / f.name)
    groups: dict[str, list[str]] = {f"look_{g}": [] for g in range(num_groups)}
    unique = dict(zip(scene.image_names, scene.image_paths))  # val and test may list the same images
    for k, (name, path) in enumerate(unique.items()):
        g = k % num_groups
        groups[f"look_{g}"].append(name)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        arr[..., :3] = looks[g].apply(arr[..., :3])
        out = dst / Path(path).relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(arr * 255.0).astype(np.uint8), "RGBA").save(out)
    write_groups(dst / f"{group_file}.json", groups)
    (dst / "looks.json").write_text(json.dumps([asdict(look) for look in looks], indent=1))
    return looks


__all__ = ["Look", "draw_looks", "make_varied_blender_scene"]
