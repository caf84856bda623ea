"""Appearance groups: which images share one look (exposure, white balance, tone).

A group file is `SCENE/NAME.json`, a JSON object `{group name: [image names]}`, where the image names
are the scene's (COLMAP: the names in the model, e.g. `DSC_5283.JPG` or `day1/0001.jpg`; Blender:
the image path relative to the scene, e.g. `train/r_0.png`). The trainer reads it with
`--data.params.colmap.appearance_groups NAME` (or `.blender.`); group ids follow the file's key order.

    python generate_image_apperance_groups.py SCENE --camera | --image | --dirname | --exif [--name NAME]

writes one (the historic misspelt script name and flags are the original project's):
  --camera   one group per COLMAP camera (`camera_<id>`; a Blender scene has one camera)
  --image    one group per image (every image its own look; val/test images are then scored with the
             NeRF-W protocol, see internal/renderers/appearance.py)
  --dirname  one group per image sub-folder (`.` for images at the top of the image folder)
  --exif     one group per EXIF exposure setting (exposure time, ISO, aperture, white balance) of the
             photos; photos without those tags share the group `no_exif`
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import DatasetError

MODES = ("camera", "image", "dirname", "exif")
DEFAULT_NAME = "appearance_groups"

# EXIF tags (the Exif sub-IFD, 0x8769) that describe how a photo was exposed.
_EXIF_IFD = 0x8769
_EXPOSURE_TAGS = (
    (0x829A, "exposure"),  # ExposureTime, seconds
    (0x8827, "iso"),  # ISOSpeedRatings / PhotographicSensitivity
    (0x829D, "f"),  # FNumber
    (0xA403, "wb"),  # WhiteBalance: 0 auto, 1 manual
)
_WHITE_BALANCE = {0: "auto", 1: "manual"}


def group_file(scene: str | os.PathLike, name: str) -> Path:
    """SCENE/NAME.json (NAME may already end in .json)."""
    return Path(scene) / (name if name.endswith(".json") else f"{name}.json")


def read_group_file(scene: Path, name: str, image_names: list[str], option: str) -> tuple[list[int], list[str]]:
    """(group id per image, group names) from SCENE/NAME.json; every image must be in exactly one group.

    `option` is the command-line option that named the file, for the messages.
    """
    file = group_file(scene, name)
    if not file.is_file():
        raise DatasetError(f"{file}: appearance group file does not exist; create it with `python generate_image_apperance_groups.py {scene} --camera --name {Path(name).stem}` (or --image, --dirname, --exif) or fix {option}")
    try:
        groups = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{file}: is not valid JSON ({e}); regenerate it with generate_image_apperance_groups.py") from None
    if not isinstance(groups, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in groups.values()):
        raise DatasetError(f"{file}: must be a JSON object {{group name: [image names]}}; regenerate it with generate_image_apperance_groups.py")
    of_image: dict[str, int] = {}
    for gid, (g, names) in enumerate(groups.items()):
        for n in names:
            if n in of_image and of_image[n] != gid:
                raise DatasetError(f"{file}: image {n!r} is in group {list(groups)[of_image[n]]!r} and in group {g!r}; an image belongs to one group")
            of_image[n] = gid
    missing = [n for n in image_names if n not in of_image]
    if missing:
        raise DatasetError(f"{file}: {len(missing)} of the {len(image_names)} images are in no group (first: {missing[0]!r}); regenerate the file for this scene")
    return [of_image[n] for n in image_names], [str(g) for g in groups]


# ---------------------------------------------------------------------------- making group files

def _fmt_number(v) -> str:
    """An EXIF rational or number as a short, file-name-friendly string (1/250, 2.8, 100)."""
    try:
        f = Fraction(v).limit_denominator(100000) if not isinstance(v, Fraction) else v
    except (TypeError, ValueError, ZeroDivisionError):
        return str(v)
    if f.denominator == 1:
        return str(f.numerator)
    if f.numerator == 1:
        return f"1/{f.denominator}"
    return f"{float(f):.3g}"


def exif_exposure_key(path: str | os.PathLike) -> Optional[str]:
    """'exposure_1/250_iso_100_f_2.8_wb_auto' from a photo's EXIF, or None when it has none of the tags.

    Raises DatasetError when the file cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{path}: cannot be read as an image ({e}); restore the file or group without --exif") from None
    sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    parts = []
    for tag, label in _EXPOSURE_TAGS:
        v = sub.get(tag, exif.get(tag) if exif else None)
        if v is None:
            continue
        if isinstance(v, (tuple, list)):
            v = v[0] if v else None
            if v is None:
                continue
        text = _WHITE_BALANCE.get(int(v), str(v)) if label == "wb" else _fmt_number(v)
        parts.append(f"{label}_{text}")
    return "_".join(parts) if parts else None


def _sorted_groups(groups: dict[str, list[str]], key: Callable[[str], object] = str) -> dict[str, list[str]]:
    return {g: sorted(groups[g]) for g in sorted(groups, key=key)}


def _add(groups: dict[str, list[str]], group: str, name: str) -> None:
    groups.setdefault(group, []).append(name)


def _scene_images(scene: Path, sparse_dir: Optional[str], image_dir: str):
    """(kind, [(image name, camera id, file path)]) of a COLMAP or Blender scene folder."""
    from . import detect_kind
    from .params import ColmapParams, DataParams

    kind = detect_kind(scene, DataParams(colmap=ColmapParams(sparse_dir=sparse_dir)))
    if kind == "blender":
        from .blender import load_blender
        from .params import BlenderParams

        s = load_blender(scene, BlenderParams(random_points=1))
        return kind, [(n, 1, p) for n, p in zip(s.image_names, s.image_paths)]
    from .colmap import find_sparse_dir
    from .colmap_model import read_model

    model = read_model(find_sparse_dir(scene, sparse_dir))
    if not model.images:
        raise DatasetError(f"{model.files['images']}: the model has no registered images, so there is nothing to group; re-run COLMAP's mapper")
    folder = scene / image_dir
    return kind, [(im.name, im.camera_id, folder / im.name) for im in model.images]


def make_groups(
    scene: str | os.PathLike,
    mode: str,
    sparse_dir: Optional[str] = None,
    image_dir: str = "images",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict[str, list[str]]:
    """{group: [image names]} for the images of the scene at `scene`, grouped by `mode` (MODES).

    Groups and the names in them are sorted (cameras by id), so the file is the same on every run.
    `progress` wraps the per-image loop of --exif (which reads every photo's header).
    """
    if mode not in MODES:
        raise ValueError(f"unknown grouping {mode!r}; choose one of {', '.join(MODES)}")
    scene = Path(scene)
    kind, images = _scene_images(scene, sparse_dir, image_dir)
    groups: dict[str, list[str]] = {}
    if mode == "camera":
        for name, cam, _ in images:
            _add(groups, f"camera_{cam}", name)
        return _sorted_groups(groups, key=lambda g: int(g.split("_", 1)[1]))
    if mode == "image":
        for name, _, _ in images:
            _add(groups, name, name)
        return _sorted_groups(groups)
    if mode == "dirname":
        for name, _, _ in images:
            _add(groups, os.path.dirname(name) or ".", name)
        return _sorted_groups(groups)
    missing = [str(p) for _, _, p in images if not Path(p).is_file()]
    if missing:
        where = "the model" if kind == "colmap" else "the transforms files"
        raise DatasetError(f"{missing[0]}: image listed in {where} does not exist ({len(missing)} of {len(images)} missing); --exif reads every photo: restore them or set --image_dir")
    for name, _, path in progress(images):
        _add(groups, exif_exposure_key(path) or "no_exif", name)
    return _sorted_groups(groups)


def unregistered_images(scene: str | os.PathLike, image_names: Iterable[str], image_dir: str = "images") -> list[str]:
    """Image files under SCENE/image_dir that the model does not list (they get no group: COLMAP did
    not register them, so the trainer never sees them)."""
    folder = Path(scene) / image_dir
    if not folder.is_dir():
        return []
    listed = set(image_names)
    exts = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return sorted(n for n in found if n not in listed)


def write_groups(path: str | os.PathLike, groups: dict[str, list[str]], overwrite: bool = False) -> Path:
    """Write the group file atomically; refuses to replace an existing one unless `overwrite`."""
    from ..atomic import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError(f"{path}: already exists; pass --overwrite to replace it, or choose another --name")
    text = json.dumps(groups, indent=4, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


__all__ = ["MODES", "DEFAULT_NAME", "group_file", "read_group_file", "make_groups", "exif_exposure_key",
           "unregistered_images", "write_groups"]
