"""Gaussian splats as plain tensors, and their INRIA-layout PLY files.

The PLY layout is the one the original 3DGS code writes and every 3DGS viewer reads: one binary
little-endian float32 `vertex` element with `x y z nx ny nz f_dc_0..2 f_rest_0..M opacity scale_0..2
rot_0..3`, every value pre-activation (log scales, logit opacity, raw quaternion). f_rest is
channel-major: the first (K-1) values are the red coefficients of bases 1..K-1, then green, then blue.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write

_SH_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest fields -> SH degree


class PlyFormatError(ValueError):
    """A PLY file that is not a readable Gaussian-splat file; the message names the file and the fix."""


@dataclass
class Splats:
    """N Gaussians, stored pre-activation exactly as in the PLY file."""

    means: Tensor  # (N,3)
    quats: Tensor  # (N,4) wxyz, not necessarily normalised
    scales: Tensor  # (N,3) log scales
    opacities: Tensor  # (N,) logit opacities
    sh0: Tensor  # (N,1,3) DC coefficients
    shN: Tensor  # (N,K-1,3) higher-order coefficients, K = (degree+1)^2
    normals: Tensor | None = None  # (N,3) carried through for byte-exact round trips; 3DGS writes zeros

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round((self.shN.shape[1] + 1) ** 0.5)) - 1

    @property
    def sh(self) -> Tensor:
        """(N,K,3) all SH coefficients."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def to(self, device=None, dtype=None) -> "Splats":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def activated(self):
        """(means, unit quats, scales, opacities, sh) ready for rasterize()."""
        quats = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.means, quats, torch.exp(self.scales), torch.sigmoid(self.opacities), self.sh


def ply_field_names(sh_degree: int) -> list[str]:
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _required_fields() -> list[str]:
    return ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply_vertices(path: Path) -> np.ndarray:
    """The `vertex` element of a PLY file as a numpy structured array (binary LE/BE or ASCII).

    Only what Gaussian files use is supported: scalar properties, the vertex element first.
    """
    with open(path, "rb") as f:
        raw = f.read()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise PlyFormatError(f"{path}: not a PLY file (no 'ply' magic or no end_header); is this the right file?")
    body_start = raw.index(b"\n", end) + 1 if b"\n" in raw[end:] else len(raw)
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []
    for no, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "property" and elements and words[1] == "list":
            elements[-1][2].append((words[-1], None))
        else:
            raise PlyFormatError(f"{path}: header line {no} is not valid PLY: {line.strip()!r}")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise PlyFormatError(f"{path}: unsupported or missing PLY format {fmt!r}")
    if not elements or elements[0][0] != "vertex":
        raise PlyFormatError(f"{path}: has no 'vertex' element first; a Gaussian PLY stores one vertex per Gaussian")
    _, count, props = elements[0]
    if any(t is None for _, t in props):
        raise PlyFormatError(f"{path}: the vertex element has list properties; a Gaussian PLY has scalar ones only")
    order = ">" if fmt == "binary_big_endian" else "<"
    dtype = np.dtype([(name, order + t) for name, t in props])
    if fmt == "ascii":
        try:
            table = np.loadtxt(raw[body_start:].decode("ascii").splitlines()[:count], dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise PlyFormatError(f"{path}: unreadable ASCII vertex data ({exc})") from exc
        if table.shape != (count, len(props)):
            raise PlyFormatError(
                f"{path}: expected {count} vertices of {len(props)} values, found {table.shape[0]} rows; the file is truncated"
            )
        out = np.empty(count, dtype=dtype)
        for i, (name, _) in enumerate(props):
            out[name] = table[:, i]
        return out
    need = count * dtype.itemsize
    have = len(raw) - body_start
    if have < need:
        raise PlyFormatError(
            f"{path}: truncated: the header promises {count} vertices ({need} bytes) but {have} bytes follow; "
            "re-export or re-download the file"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=body_start)


def load_from_ply(path, device=None) -> Splats:
    """Read an INRIA-layout Gaussian PLY (SH degree 0..3, normals and f_rest optional).

    Raises PlyFormatError naming the file for truncated or malformed files, missing fields, an
    unexpected number of f_rest fields, and NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PLY file")
    data = read_ply_vertices(path)
    names = list(data.dtype.names)
    missing = [n for n in _required_fields() if n not in names]
    if missing:
        raise PlyFormatError(
            f"{path}: missing field(s) {', '.join(missing)}; a Gaussian PLY needs x y z f_dc_0..2 opacity "
            "scale_0..2 rot_0..3 (INRIA layout) — is this a plain point cloud rather than trained Gaussians?"
        )
    n_rest = sum(1 for n in names if n.startswith("f_rest_"))
    if n_rest not in _SH_REST_COUNTS:
        raise PlyFormatError(
            f"{path}: has {n_rest} f_rest fields; expected 0, 9, 24 or 45 (SH degree 0..3, 3 colour channels)"
        )
    rest_names = [f"f_rest_{i}" for i in range(n_rest)]
    if any(n not in names for n in rest_names):
        raise PlyFormatError(f"{path}: f_rest fields are not numbered f_rest_0..f_rest_{n_rest - 1}")
    n = len(data)

    def cols(keys) -> np.ndarray:
        return np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], axis=1) if keys else np.zeros((n, 0), np.float32)

    arrays = {
        "means": cols(["x", "y", "z"]),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "rest": cols(rest_names),
        "opacities": cols(["opacity"])[:, 0],
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
    }
    has_normals = all(k in names for k in ("nx", "ny", "nz"))
    if has_normals:
        arrays["normals"] = cols(["nx", "ny", "nz"])
    for key, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.nonzero(bad.reshape(n, -1).any(axis=1))[0]
            raise PlyFormatError(
                f"{path}: {int(bad.sum())} NaN/inf value(s) in {key} (first at vertex {int(rows[0])} of {n}); "
                "the model diverged or the file is corrupt — re-export from a good checkpoint"
            )
    k1 = n_rest // 3
    shn = arrays["rest"].reshape(n, 3, k1).transpose(0, 2, 1)  # channel-major in the file
    splats = Splats(
        means=torch.from_numpy(arrays["means"]),
        quats=torch.from_numpy(arrays["quats"]),
        scales=torch.from_numpy(arrays["scales"]),
        opacities=torch.from_numpy(np.ascontiguousarray(arrays["opacities"])),
        sh0=torch.from_numpy(arrays["sh0"][:, None, :].copy()),
        shN=torch.from_numpy(np.ascontiguousarray(shn)),
        normals=torch.from_numpy(arrays["normals"]) if has_normals else None,
    )
    return splats.to(device) if device is not None else splats


def save_ply(splats: Splats, path) -> Path:
    """Write `splats` in the INRIA layout (what the original 3DGS writes), atomically.

    The file is written beside the target and renamed into place, so a crash never leaves half a file.
    """
    path = Path(path)
    n = len(splats)
    degree = splats.sh_degree
    k1 = (degree + 1) ** 2 - 1
    if splats.shN.shape[1] != k1:
        raise ValueError(f"shN has {splats.shN.shape[1]} bases; an SH degree needs 0, 3, 8 or 15")

    def np32(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().reshape(n, -1)

    normals = np32(splats.normals) if splats.normals is not None else np.zeros((n, 3), np.float32)
    rest = np32(splats.shN.transpose(1, 2))  # (N,3,K-1) -> channel-major
    table = np.concatenate(
        [np32(splats.means), normals, np32(splats.sh0), rest, np32(splats.opacities), np32(splats.scales), np32(splats.quats)],
        axis=1,
    )
    names = ply_field_names(degree)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    body = np.ascontiguousarray(table, dtype="<f4").tobytes()

    def write(f):
        f.write(header.encode("ascii"))
        f.write(body)

    return atomic_write(path, write)
