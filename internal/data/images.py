"""Decoding one image of a scene as the trainer wants it: uint8 RGB at the camera's size, Blender's
alpha composited on the background, lens distortion removed, and the user mask combined with the
valid-pixel mask of the undistortion.

Everything stays uint8 (masks bool) until the trainer uses it. Decoding runs in background threads:
Pillow and torch release the GIL while they work.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .errors import DatasetError
from .scene import Distortion, Scene

# A decompression-bomb warning would otherwise be raised as an error for large (>89 Mpx) photos;
# dataset images are trusted local files and memory is bounded by the cache instead.
Image.MAX_IMAGE_PIXELS = None


def _open(path: str, what: str = "image") -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file does not exist; restore it, or remove the {what} from the dataset") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot be read as an {what} ({type(e).__name__}: {e}); replace the file with a valid PNG/JPEG") from None


def read_size(path: str, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file header only (cheap: nothing is decoded)."""
    with _open(path, what) as im:
        return im.size


def _decode(path: str, what: str) -> Image.Image:
    im = _open(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", "palette images with transparency"
            im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(f"{path}: {what} cannot be decoded ({type(e).__name__}: {e}); the file is truncated or corrupt: replace it") from None
    return im


def _reduce_factor(path: str, size: tuple[int, int], target: tuple[int, int]) -> int:
    """Integer factor f with size // f == target (f = 1 when equal), or a DatasetError."""
    (w, h), (tw, th) = size, target
    if (w, h) == (tw, th):
        return 1
    f = w // tw if tw > 0 else 0
    if f >= 2 and w // f == tw and h // f == th:
        return f
    raise DatasetError(f"{path}: image is {w}x{h} but {tw}x{th} was expected (the file changed since the dataset was read?); restore the file")


def _box_reduce(im: Image.Image, f: int) -> Image.Image:
    """Average f x f blocks of the top-left (w//f*f) x (h//f*f) pixels: intrinsics scale exactly by 1/f."""
    if f == 1:
        return im
    w, h = im.size
    return im.reduce(f, box=(0, 0, w // f * f, h // f * f))


# ------------------------------------------------------------------------------------------------
# undistortion


def distort_normalized(x: np.ndarray, y: np.ndarray, k) -> tuple[np.ndarray, np.ndarray]:
    """Apply the distortion of `Distortion.k` to normalised image coordinates (x, y)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = k
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xy = x * y
    xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
    return xd, yd


def undistortion_grid(d: Distortion, fx: float, fy: float, cx: float, cy: float, width: int, height: int):
    """For every pixel of the pinhole output (fx, fy, cx, cy, width x height), where to sample the
    distorted image: (grid (1,H,W,2) float32 in grid_sample's [-1,1] units, align_corners=False),
    and the valid-pixel mask (H,W) bool (the sample falls inside the distorted image)."""
    u = (np.arange(width, dtype=np.float64) + 0.5 - cx) / fx
    v = (np.arange(height, dtype=np.float64) + 0.5 - cy) / fy
    x, y = np.meshgrid(u, v)
    with np.errstate(all="ignore"):  # absurd coefficients give inf/NaN: those pixels are invalid
        xd, yd = distort_normalized(x, y, d.k)
        sx = d.fx * xd + d.cx  # pixel-edge coordinates: 0 .. width
        sy = d.fy * yd + d.cy
        valid = (sx >= 0) & (sx <= width) & (sy >= 0) & (sy <= height) & np.isfinite(sx) & np.isfinite(sy)
    # Beyond the turning point of a barrel polynomial the distorted radius shrinks again and the
    # image would be sampled a second time, mirrored: only the monotonic part is valid.
    if any(d.k):
        valid &= _radius_grows(x, y, d.k)
    with np.errstate(all="ignore"):
        grid = np.stack([2 * sx / width - 1, 2 * sy / height - 1], axis=-1)
    grid = np.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0).astype(np.float32)
    return torch.from_numpy(grid)[None], valid


def _radius_grows(x, y, k, eps=1e-4):
    """Whether the radial distortion r -> r * radial(r^2) is still increasing at each pixel's radius."""
    k1, k2, _, _, k3, k4, k5, k6 = k

    def rd(r):
        r2 = r * r
        return r * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))

    r = np.sqrt(x * x + y * y)
    with np.errstate(all="ignore"):
        return rd(r * (1 + eps) + eps) > rd(r)


_GRID_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_GRID_LOCK = threading.Lock()
_GRID_CACHE_SIZE = 4  # grids are W*H*8 bytes; scenes often have one camera per image


def _cached_grid(d: Distortion, fx, fy, cx, cy, w, h):
    key = (d, float(fx), float(fy), float(cx), float(cy), int(w), int(h))
    with _GRID_LOCK:
        hit = _GRID_CACHE.get(key)
        if hit is not None:
            _GRID_CACHE.move_to_end(key)
            return hit
    value = undistortion_grid(d, fx, fy, cx, cy, w, h)
    with _GRID_LOCK:
        _GRID_CACHE[key] = value
        while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
            _GRID_CACHE.popitem(last=False)
    return value


def _warp(arr: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    """Resample an (H,W[,C]) uint8 array through `grid` (bilinear for colour, nearest for masks)."""
    t = torch.from_numpy(arr.astype(np.float32))
    t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(t, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out[0].round_().clamp_(0, 255).to(torch.uint8)
    out = out[0] if arr.ndim == 2 else out.permute(1, 2, 0)
    return out.contiguous().numpy()


# ------------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    image: np.ndarray  # (H,W,3) uint8 RGB
    alpha: Optional[np.ndarray]  # (H,W) uint8 or None
    mask: Optional[np.ndarray]  # (H,W) bool, True = use pixel, or None (all used)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.image, self.alpha, self.mask) if a is not None)


def load_mask(path: str, image_path: str, image_size: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """The user mask of one image as bool (True = use), at the target size.

    It must be the size of the image file (it is then reduced like the image, keeping a pixel only
    when the whole block is kept) or the target size.
    """
    im = _decode(path, "mask")
    if im.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "LA"):
        raise DatasetError(f"{path}: mask has {len(im.getbands())} channels (mode {im.mode}), a single channel is needed (0 = ignore the pixel); save it as 8-bit grayscale, e.g. PIL Image.convert('L')")
    arr = np.asarray(im.getchannel(0) if im.mode == "LA" else im) != 0
    if im.size == target:
        return arr
    if im.size == image_size:
        f = _reduce_factor(image_path, image_size, target)
        th, tw = target[1], target[0]
        return arr[: th * f, : tw * f].reshape(th, f, tw, f).all(axis=(1, 3))
    raise DatasetError(f"{path}: mask is {im.size[0]}x{im.size[1]} but its image {image_path} is {image_size[0]}x{image_size[1]}; make the mask the size of the image")


def load_image(scene: Scene, i: int) -> Decoded:
    """Decode image `i` of `scene` as the trainer gets it (see the module docstring)."""
    path = scene.image_paths[i]
    cam = scene.cameras
    target = (int(cam.width[i]), int(cam.height[i]))
    im = _decode(path, "image")
    f = _reduce_factor(path, im.size, target)
    file_size = im.size
    alpha = None
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if scene.composite_alpha and has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        a = rgba[..., 3:4].astype(np.uint16)
        bg = np.asarray([round(255 * c) for c in scene.background], dtype=np.uint16)
        rgb = ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
        alpha = rgba[..., 3]
        if f > 1:
            rgb = np.asarray(_box_reduce(Image.fromarray(rgb), f))
            alpha = np.asarray(_box_reduce(Image.fromarray(alpha), f))
    else:  # no alpha, or a COLMAP photo: RGB, alpha dropped
        rgb = np.asarray(_box_reduce(im if im.mode == "RGB" else im.convert("RGB"), f))
    im.close()

    mask = None
    mpath = scene.mask_paths[i] if scene.mask_paths else None
    if mpath is not None:
        mask = load_mask(mpath, path, file_size, target)

    d = scene.distortions[i] if scene.distortions else None
    if d is not None:
        grid, valid = _cached_grid(d, float(cam.fx[i]), float(cam.fy[i]), float(cam.cx[i]), float(cam.cy[i]), *target)
        rgb = _warp(rgb, grid, "bilinear")
        if alpha is not None:
            alpha = _warp(alpha, grid, "bilinear")
        if mask is not None:
            mask = _warp(mask.astype(np.uint8), grid, "nearest").astype(bool) & valid
        else:
            mask = valid.copy()
    if not rgb.flags.writeable:
        rgb = rgb.copy()  # torch.from_numpy needs a writable array
    if alpha is not None and not alpha.flags.writeable:
        alpha = alpha.copy()
    return Decoded(rgb, alpha, mask)
