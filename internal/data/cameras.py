"""A batch of pinhole cameras in OpenCV axes, as tensors with a leading dimension N.

Conventions (COLMAP's and gsplat's): `R`, `T` map world to camera (x_cam = R x_world + T), the
camera looks down +z with +y pointing down the image; pixel centres are at +0.5, so a centred
principal point is cx = width / 2. Down-scaling by an integer factor f that keeps the top-left
`width // f * f` x `height // f * f` pixels and box-averages f x f blocks maps pixel edges exactly,
hence fx / f, cx / f and width // f.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Cameras:
    R: Tensor  # (N,3,3) float32 world-to-camera rotation
    T: Tensor  # (N,3) float32 world-to-camera translation
    fx: Tensor  # (N,) float32
    fy: Tensor  # (N,) float32
    cx: Tensor  # (N,) float32
    cy: Tensor  # (N,) float32
    width: Tensor  # (N,) int64
    height: Tensor  # (N,) int64
    appearance_id: Tensor  # (N,) int64

    @staticmethod
    def from_numpy(R, T, fx, fy, cx, cy, width, height, appearance_id=None) -> "Cameras":
        n = len(width)
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32).reshape(-1)  # noqa: E731
        if appearance_id is None:
            appearance_id = torch.zeros(n, dtype=torch.int64)
        return Cameras(
            R=torch.as_tensor(R, dtype=torch.float32).reshape(n, 3, 3),
            T=torch.as_tensor(T, dtype=torch.float32).reshape(n, 3),
            fx=f32(fx), fy=f32(fy), cx=f32(cx), cy=f32(cy),
            width=torch.as_tensor(width, dtype=torch.int64).reshape(-1),
            height=torch.as_tensor(height, dtype=torch.int64).reshape(-1),
            appearance_id=torch.as_tensor(appearance_id, dtype=torch.int64).reshape(-1),
        )

    def _map(self, fn) -> "Cameras":
        return Cameras(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.width.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        """An int gives a length-1 Cameras; a slice, list or index/bool tensor gives a Cameras."""
        if isinstance(idx, (list, tuple)):
            idx = torch.as_tensor(idx, dtype=torch.int64)
        elif not isinstance(idx, (slice, torch.Tensor)):
            idx = operator.index(idx)  # int, numpy integer
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"camera index {idx} out of range for {n} cameras")
            idx = idx % n
            idx = slice(idx, idx + 1)
        elif isinstance(idx, torch.Tensor) and idx.dim() == 0:
            return self[int(idx)]
        return self._map(lambda t: t[idx])

    def to(self, device, non_blocking: bool = False) -> "Cameras":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    @property
    def device(self) -> torch.device:
        return self.R.device

    def viewmats(self) -> Tensor:
        """(N,4,4) world-to-camera matrices."""
        m = torch.zeros(len(self), 4, 4, dtype=self.R.dtype, device=self.R.device)
        m[:, :3, :3] = self.R
        m[:, :3, 3] = self.T
        m[:, 3, 3] = 1
        return m

    def Ks(self) -> Tensor:
        """(N,3,3) intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]]."""
        K = torch.zeros(len(self), 3, 3, dtype=self.fx.dtype, device=self.fx.device)
        K[:, 0, 0] = self.fx
        K[:, 1, 1] = self.fy
        K[:, 0, 2] = self.cx
        K[:, 1, 2] = self.cy
        K[:, 2, 2] = 1
        return K

    def camera_centers(self) -> Tensor:
        """(N,3) camera centres in world coordinates, C = -R^T T."""
        return -(self.R.transpose(1, 2) @ self.T[..., None])[..., 0]

    def scaled(self, factor: int) -> "Cameras":
        """Intrinsics and size of images down-scaled by the integer `factor` (see module docstring)."""
        f = int(factor)
        if f < 1:
            raise ValueError(f"scale factor must be a positive integer, got {factor}")
        return Cameras(
            R=self.R, T=self.T,
            fx=self.fx / f, fy=self.fy / f, cx=self.cx / f, cy=self.cy / f,
            width=self.width // f, height=self.height // f,
            appearance_id=self.appearance_id,
        )

    def resized(self, width: Tensor, height: Tensor) -> "Cameras":
        """Intrinsics of images resized edge to edge to (width, height) per camera (any ratio)."""
        width = torch.as_tensor(width, dtype=torch.int64, device=self.width.device).expand_as(self.width)
        height = torch.as_tensor(height, dtype=torch.int64, device=self.height.device).expand_as(self.height)
        sx = width.to(self.fx.dtype) / self.width.to(self.fx.dtype)
        sy = height.to(self.fy.dtype) / self.height.to(self.fy.dtype)
        return Cameras(
            R=self.R, T=self.T,
            fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
            width=width.clone(), height=height.clone(),
            appearance_id=self.appearance_id,
        )
