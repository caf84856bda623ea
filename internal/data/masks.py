"""Finding and checking user masks: the mask of image `a.jpg` is `MASKS/a.jpg.png` or `MASKS/a.png`
(sub-folders of the image name are kept), one channel, 0 = leave the pixel out of loss and metrics."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional

from .errors import DatasetError
from .images import _open

SINGLE_CHANNEL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "LA")


def mask_candidates(mask_dir: Path, name: str) -> list[Path]:
    p = PurePosixPath(name)
    return [mask_dir / f"{name}.png", mask_dir / p.with_suffix(".png")]


def find_masks(
    scene_path: Path,
    mask_dir: Optional[str],
    names: list[str],
    image_paths: list[str],
    file_sizes: list[tuple[int, int]],
    target_sizes: list[tuple[int, int]],
    kind: str,
) -> list[Optional[str]]:
    """Mask path per image (None for all when `mask_dir` is None); every image must have one, of the
    size of its image file or of the image as loaded, single-channel. Only headers are read."""
    if mask_dir is None:
        return [None] * len(names)
    flag = f"--data.params.{kind}.mask_dir"
    d = scene_path / mask_dir
    if not d.is_dir():
        raise DatasetError(f"{d}: mask folder does not exist; fix {flag} (absolute, or relative to {scene_path})")
    out: list[Optional[str]] = []
    for name, ipath, fsize, tsize in zip(names, image_paths, file_sizes, target_sizes):
        cands = mask_candidates(d, name)
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise DatasetError(f"{cands[0]}: mask of image {ipath} does not exist (nor {cands[1].name}); every image needs a mask (all 255 to keep every pixel), or drop {flag}")
        with _open(str(found), "mask") as m:
            size, mode = m.size, m.mode
        if mode not in SINGLE_CHANNEL_MODES:
            raise DatasetError(f"{found}: mask has mode {mode}, a single channel is needed (0 = ignore the pixel); save it as 8-bit grayscale, e.g. PIL Image.convert('L')")
        if size != tuple(fsize) and size != tuple(tsize):
            raise DatasetError(f"{found}: mask is {size[0]}x{size[1]} but its image {ipath} is {fsize[0]}x{fsize[1]}; make the mask the size of the image")
        out.append(str(found))
    return out
