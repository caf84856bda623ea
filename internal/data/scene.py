"""What a parser hands to the rest of the trainer: cameras, image/mask files, initial points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .cameras import Cameras


@dataclass(frozen=True)
class Distortion:
    """Lens distortion of one image, in OpenCV's rational model (COLMAP's SIMPLE_RADIAL, RADIAL,
    OPENCV and FULL_OPENCV are special cases), for the intrinsics of the image as loaded.

    x_d = x r(ρ²) + 2 p1 x y + p2 (ρ² + 2x²),  y_d = y r(ρ²) + p1 (ρ² + 2y²) + 2 p2 x y,
    r = (1 + k1 ρ² + k2 ρ⁴ + k3 ρ⁶) / (1 + k4 ρ² + k5 ρ⁴ + k6 ρ⁶), on normalised coordinates.
    """

    model: str  # the COLMAP model it came from, for messages
    fx: float
    fy: float
    cx: float
    cy: float
    k: tuple[float, ...]  # k1, k2, p1, p2, k3, k4, k5, k6


@dataclass
class Scene:
    cameras: Cameras  # all images, intrinsics/size as loaded (after down-sampling, undistorted pinhole)
    image_names: list[str]
    image_paths: list[str]
    mask_paths: list[Optional[str]]
    points_xyz: np.ndarray  # (P,3) float32
    points_rgb: np.ndarray  # (P,3) uint8
    extent: float  # 1.1 x max distance of train camera centres from their mean (3DGS nerf_normalization)
    train_ids: list[int]
    val_ids: list[int]
    test_ids: list[int]
    appearance_group_names: list[str]
    kind: str  # "colmap" | "blender"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str = ""
    # Per image: the size of the file on disk (w, h) (it is resized on load when it differs from the
    # camera's), the lens distortion to remove on load (None = pinhole already), and whether the RGBA
    # file is composited on `background` (Blender).
    file_sizes: list[tuple[int, int]] = field(default_factory=list)
    distortions: list[Optional[Distortion]] = field(default_factory=list)
    composite_alpha: bool = False
    # The initial points are random (Blender scenes: 3DGS fills a cube), not a reconstruction's.
    random_points: bool = False

    def __len__(self) -> int:
        return len(self.image_names)


def scene_extent(centers: np.ndarray) -> float:
    """3DGS `getNerfppNorm` radius: 1.1 x the largest distance of a camera centre from their mean.

    With a single camera (distance 0) the learning rates would vanish; 1.0 is used instead.
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    if len(centers) == 0:
        return 1.0
    radius = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return radius if radius > 0 else 1.0
