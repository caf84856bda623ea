"""Reader for COLMAP sparse models (cameras, images, points3D), binary or text.

Written here rather than through pycolmap so that every defect of a file is reported as one
`DatasetError` line naming the file and the record (binary) or line (text), and so that no input,
however mangled, can crash the process or make it loop: every count read from a file is checked
against the bytes that remain before anything is allocated or iterated.

Formats (COLMAP's `src/colmap/scene/reconstruction_io*`, unchanged in COLMAP 4 / pycolmap 4.2,
which add rigs.* and frames.* files that 3DGS does not need):
  cameras.bin   u64 n; n x { u32 camera_id, i32 model_id, u64 width, u64 height, f64 params[k(model)] }
  images.bin    u64 n; n x { u32 image_id, f64 qw qx qy qz, f64 tx ty tz, u32 camera_id,
                             name bytes '\\0', u64 n2d, n2d x { f64 x, f64 y, i64 point3D_id } }
  points3D.bin  u64 n; n x { u64 point3D_id, f64 x y z, u8 r g b, f64 error, u64 t,
                             t x { u32 image_id, u32 point2D_idx } }
  *.txt         the same records, one per line (images: a pose line then a points2D line),
                '#' comments, with a '# Number of ...: N' header that COLMAP writes.
Little-endian throughout.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError

# model id -> (name, number of parameters); the complete list of COLMAP 4.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}

# Sanity bounds: beyond these a value is corruption, not a camera.
MAX_IMAGE_SIDE = 1 << 17
QUATERNION_TOLERANCE = 1e-2  # |q| must be within this of 1 (COLMAP writes unit quaternions)
# Positions, translations and intrinsics beyond this are corruption (and overflow float32 rendering);
# focal lengths below MIN_FOCAL vanish in float32.
MAX_VALUE = 1e15
MIN_FOCAL = 1e-6


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, in COLMAP's order for `model`
    where: str  # "file: camera N" or "file:LINE", for messages


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) float64 w,x,y,z, normalised, world-to-camera rotation
    tvec: np.ndarray  # (3,) float64 world-to-camera translation
    camera_id: int
    name: str
    num_points2d: int
    where: str


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]  # in file order
    points_xyz: np.ndarray  # (P,3) float64
    points_rgb: np.ndarray  # (P,3) uint8
    points_error: np.ndarray  # (P,) float64
    points_ids: np.ndarray  # (P,) uint64; points are sorted by id, whatever the file order
    files: dict[str, Path] = field(default_factory=dict)  # "cameras" | "images" | "points3D" -> path


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w,x,y,z) -> 3x3 rotation matrix (Hamilton convention, as COLMAP)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


# ----------------------------------------------------------------------------------------------
# checks shared by both formats


def _check_camera(where: str, cam_id: int, model_id: int, width: int, height: int, params) -> ColmapCamera:
    if model_id not in CAMERA_MODELS:
        known = ", ".join(f"{i} {n}" for i, (n, _) in CAMERA_MODELS.items())
        raise DatasetError(
            f"{where}: camera {cam_id} has model id {model_id} (unknown; COLMAP's are {known}); "
            "the file is corrupt or from an unsupported tool: re-export it with `colmap model_converter`"
        )
    name = CAMERA_MODELS[model_id][0]
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise DatasetError(
            f"{where}: camera {cam_id} has size {width}x{height}, outside 1..{MAX_IMAGE_SIDE}; the model is corrupt"
        )
    params = np.asarray(params, dtype=np.float64)
    if not np.all(np.isfinite(params)) or np.any(np.abs(params) > MAX_VALUE):
        raise DatasetError(f"{where}: camera {cam_id} ({name}) has non-finite or absurd parameters {params.tolist()}; the model is corrupt: re-export it")
    nf = 1 if name.startswith("SIMPLE") or name in ("RADIAL", "RADIAL_FISHEYE") else 2
    if name != "EQUIRECTANGULAR" and np.any(params[:nf] < MIN_FOCAL):
        raise DatasetError(f"{where}: camera {cam_id} ({name}) has focal length {params[:nf].tolist()}, not positive; the model is corrupt: re-export it")
    return ColmapCamera(cam_id, name, int(width), int(height), params, where)


def _check_image(where: str, image_id, q, t, camera_id, name, n2d, cameras) -> ColmapImage:
    q = np.asarray(q, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))) or np.any(np.abs(t) > MAX_VALUE):
        raise DatasetError(f"{where}: image {image_id} ({name!r}) has a non-finite or absurd pose q={q.tolist()} t={t.tolist()}; the model is corrupt: re-run or re-export the reconstruction")
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        raise DatasetError(f"{where}: image {image_id} ({name!r}) has quaternion {q.tolist()} of norm {norm:.6g}, not a rotation; the model is corrupt: re-run or re-export the reconstruction")
    if camera_id not in cameras:
        raise DatasetError(f"{where}: image {image_id} ({name!r}) refers to camera {camera_id}, which the cameras file does not define; cameras and images come from different models: export them together")
    if not name or name.strip() != name or any(ord(c) < 32 for c in name):
        raise DatasetError(f"{where}: image {image_id} has an invalid name {name!r}; the model is corrupt")
    return ColmapImage(int(image_id), q / norm, t, int(camera_id), name, int(n2d), where)


def _check_unique(ids, what: str, path: Path, where_of) -> None:
    seen: dict = {}
    for k, i in enumerate(ids):
        if i in seen:
            raise DatasetError(f"{where_of(k)}: {what} {i!r} appears twice (first at {where_of(seen[i])}); the model is corrupt: re-export it with `colmap model_converter`")
        seen[i] = k


def _check_points(path, ids, xyz, where_of):
    if len(xyz):
        with np.errstate(invalid="ignore"):
            bad = ~np.all(np.isfinite(xyz) & (np.abs(xyz) <= MAX_VALUE), axis=1)
        if bad.any():
            k = int(np.argmax(bad))
            raise DatasetError(f"{where_of(k)}: point {ids[k]} has non-finite or absurd position {xyz[k].tolist()}; the model is corrupt: re-export it")
        ids = np.asarray(ids, dtype=np.uint64)
        order = np.argsort(ids, kind="stable")
        dup = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
        if len(dup):
            first, second = int(order[dup[0]]), int(order[dup[0] + 1])
            raise DatasetError(f"{where_of(second)}: point id {int(ids[second])} appears twice (first at {where_of(first)}); the model is corrupt: re-export it with `colmap model_converter`")


# ----------------------------------------------------------------------------------------------
# binary


class _Bin:
    """Bounds-checked little-endian reads over the bytes of one file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"{path}: cannot be read ({e.strerror}); check that it exists and is readable") from None
        self.off = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.off + n > len(self.buf):
            raise DatasetError(
                f"{self.path}: truncated at byte {self.off} while reading {what} (needs {n} bytes, {len(self.buf) - self.off} left); "
                "the file is incomplete or corrupt: copy it again or re-export the model"
            )

    def unpack(self, fmt: struct.Struct, what: str):
        self.need(fmt.size, what)
        out = fmt.unpack_from(self.buf, self.off)
        self.off += fmt.size
        return out

    def count(self, min_record: int, what: str) -> int:
        (n,) = self.unpack(_U64, f"the number of {what}")
        left = len(self.buf) - self.off
        if n * min_record > left:
            raise DatasetError(
                f"{self.path}: header announces {n} {what} but only {left} bytes follow (at least {min_record} per record); "
                "the file is truncated or corrupt: copy it again or re-export the model"
            )
        return n

    def end(self, n: int, what: str) -> None:
        if self.off != len(self.buf):
            raise DatasetError(
                f"{self.path}: {len(self.buf) - self.off} unexpected bytes after the {n} {what} the header announces; "
                "the count and the records disagree: the file is corrupt or not a COLMAP model, re-export it"
            )


_U64 = struct.Struct("<Q")
_CAM = struct.Struct("<IiQQ")
_IMG = struct.Struct("<I7dI")
_PT = struct.Struct("<Q3d3BdQ")


def read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Bin(path)
    n = r.count(_CAM.size + 8 * 3, "cameras")
    cams: dict[int, ColmapCamera] = {}
    for k in range(n):
        rec = f"camera record {k}"
        cam_id, model_id, w, h = r.unpack(_CAM, rec)
        where = f"{path}: camera record {k}"
        if model_id not in CAMERA_MODELS:
            _check_camera(str(path), cam_id, model_id, w, h, [])  # raises the unknown-model error
        np_ = CAMERA_MODELS[model_id][1]
        params = r.unpack(struct.Struct(f"<{np_}d"), rec + " parameters")
        if cam_id in cams:
            raise DatasetError(f"{where}: camera id {cam_id} appears twice (first at {cams[cam_id].where}); the model is corrupt: re-export it with `colmap model_converter`")
        cams[cam_id] = _check_camera(where, cam_id, model_id, w, h, params)
    r.end(n, "cameras")
    return cams


def read_images_bin(path: Path, cameras: dict[int, ColmapCamera]) -> list[ColmapImage]:
    r = _Bin(path)
    n = r.count(_IMG.size + 1 + 8, "images")
    images: list[ColmapImage] = []
    for k in range(n):
        rec = f"image record {k}"
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.unpack(_IMG, rec)
        end = r.buf.find(b"\0", r.off)
        if end < 0:
            r.need(len(r.buf) + 1 - r.off, rec + " name")
        name = os.fsdecode(r.buf[r.off:end])
        r.off = end + 1
        (n2d,) = r.unpack(_U64, rec + " number of points2D")
        r.need(n2d * 24, f"{rec} ({name!r}) {n2d} points2D")
        r.off += n2d * 24
        images.append(_check_image(f"{path}: image record {k}", image_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name, n2d, cameras))
    r.end(n, "images")
    _check_unique([im.id for im in images], "image id", path, lambda k: images[k].where)
    _check_unique([im.name for im in images], "image name", path, lambda k: images[k].where)
    return images


def read_points3d_bin(path: Path):
    r = _Bin(path)
    n = r.count(_PT.size, "points")
    ids = np.empty(n, np.uint64)
    xyz = np.empty((n, 3), np.float64)
    rgb = np.empty((n, 3), np.uint8)
    err = np.empty(n, np.float64)
    buf, off, size, fmt = r.buf, r.off, len(r.buf), _PT
    for k in range(n):
        if off + fmt.size > size:
            r.off = off
            r.need(fmt.size, f"point record {k}")
        pid, x, y, z, cr, cg, cb, e, t = fmt.unpack_from(buf, off)
        off += fmt.size + 8 * t
        if off > size:
            r.off = off - 8 * t
            r.need(8 * t, f"point record {k} (id {pid}) track of {t} elements")
        ids[k] = pid
        xyz[k] = (x, y, z)
        rgb[k] = (cr, cg, cb)
        err[k] = e
    r.off = off
    r.end(n, "points")
    _check_points(path, ids, xyz, lambda k: f"{path}: point record {k}")
    return ids, xyz, rgb, err


# ----------------------------------------------------------------------------------------------
# text


_HEADER = re.compile(r"#\s*Number of (cameras|images|points)\s*:\s*(\d+)")


def _text_lines(path: Path):
    """(line number, stripped text) for every line, and the count announced in the header (or None)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror}); check that it exists and is readable") from None
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: contains NUL bytes, so it is not a COLMAP text model; is it a binary file named .txt?")
    text = raw.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    announced = None
    for line in lines[:8]:
        m = _HEADER.match(line.strip())
        if m:
            announced = int(m.group(2))
    return [(i + 1, line.strip()) for i, line in enumerate(lines)], announced


def _num(tok: str, kind, where: str, what: str):
    try:
        v = kind(tok)
    except (ValueError, OverflowError):
        raise DatasetError(f"{where}: {what} {tok!r} is not a{'n integer' if kind is int else ' number'}; the line is corrupt: fix it or re-export the model") from None
    if kind is float and not math.isfinite(v):
        raise DatasetError(f"{where}: {what} is {tok!r}; the line is corrupt: fix it or re-export the model")
    return v


def _check_count(path: Path, announced, n: int, what: str) -> None:
    if announced is not None and announced != n:
        raise DatasetError(
            f"{path}: the header says '# Number of {what}: {announced}' but the file holds {n}; "
            "lines were lost or added: re-export the model (colmap model_converter), or correct the header if you edited it on purpose"
        )


def read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    lines, announced = _text_lines(path)
    cams: dict[int, ColmapCamera] = {}
    for ln, line in lines:
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{ln}"
        tok = line.split()
        if len(tok) < 4:
            raise DatasetError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {len(tok)} fields; fix the line or re-export the model")
        cam_id = _num(tok[0], int, where, "camera id")
        model = tok[1]
        if model in MODEL_IDS:
            model_id, nparams = MODEL_IDS[model]
        elif re.fullmatch(r"-?\d+", model):  # a numeric model id, as some writers emit
            model_id = int(model)
            if model_id not in CAMERA_MODELS:
                _check_camera(where, cam_id, model_id, 1, 1, [])
            nparams = CAMERA_MODELS[model_id][1]
        else:
            names = ", ".join(n for n, _ in CAMERA_MODELS.values())
            raise DatasetError(f"{where}: camera {cam_id} has unknown model {model!r}; COLMAP's models are {names}")
        w = _num(tok[2], int, where, "width")
        h = _num(tok[3], int, where, "height")
        if len(tok) - 4 != nparams:
            raise DatasetError(f"{where}: camera {cam_id} ({CAMERA_MODELS[model_id][0]}) has {len(tok) - 4} parameters, the model needs {nparams}; fix the line or re-export the model")
        params = [_num(t, float, where, "parameter") for t in tok[4:]]
        if cam_id in cams:
            raise DatasetError(f"{where}: camera id {cam_id} appears twice (first at {cams[cam_id].where}); the model is corrupt: re-export it with `colmap model_converter`")
        cams[cam_id] = _check_camera(where, cam_id, model_id, w, h, params)
    _check_count(path, announced, len(cams), "cameras")
    return cams


def read_images_txt(path: Path, cameras: dict[int, ColmapCamera]) -> list[ColmapImage]:
    lines, announced = _text_lines(path)
    images: list[ColmapImage] = []
    i = 0
    while i < len(lines):
        ln, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{ln}"
        tok = line.split()
        if len(tok) < 10:
            raise DatasetError(f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {len(tok)} fields; a line was lost or split: re-export the model")
        image_id = _num(tok[0], int, where, "image id")
        vals = [_num(t, float, where, "pose value") for t in tok[1:8]]
        cam_id = _num(tok[8], int, where, "camera id")
        name = " ".join(tok[9:])
        # As COLMAP does, the physical line after a pose line is its points2D line, even when empty.
        n2d = 0
        if i < len(lines):
            pln, pts = lines[i]
            i += 1
            ntok = len(pts.split())
            if ntok % 3:
                raise DatasetError(f"{path}:{pln}: the points2D line of image {image_id} ({name!r}) has {ntok} values, not (X, Y, POINT3D_ID) triples; a line was lost or added: re-export the model")
            n2d = ntok // 3
        images.append(_check_image(where, image_id, vals[:4], vals[4:], cam_id, name, n2d, cameras))
    _check_count(path, announced, len(images), "images")
    _check_unique([im.id for im in images], "image id", path, lambda k: images[k].where)
    _check_unique([im.name for im in images], "image name", path, lambda k: images[k].where)
    return images


def read_points3d_txt(path: Path):
    lines, announced = _text_lines(path)
    ids, xyz, rgb, err, where_ln = [], [], [], [], []
    for ln, line in lines:
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{ln}"
        tok = line.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise DatasetError(f"{where}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...', got {len(tok)} fields; fix the line or re-export the model")
        ids.append(_num(tok[0], int, where, "point id"))
        if not 0 <= ids[-1] < 1 << 64:
            raise DatasetError(f"{where}: point id {ids[-1]} is outside 0..2^64-1; fix the line or re-export the model")
        xyz.append([_num(t, float, where, "coordinate") for t in tok[1:4]])
        c = [_num(t, int, where, "colour") for t in tok[4:7]]
        if not all(0 <= v <= 255 for v in c):
            raise DatasetError(f"{where}: point {ids[-1]} has colour {c} outside 0..255; fix the line or re-export the model")
        rgb.append(c)
        err.append(_num(tok[7], float, where, "error"))
        for t in tok[8:]:
            _num(t, int, where, "track element")
        where_ln.append(where)
    _check_count(path, announced, len(ids), "points")
    xyz_a = np.asarray(xyz, np.float64).reshape(-1, 3)
    rgb_a = np.asarray(rgb, np.uint8).reshape(-1, 3)
    err_a = np.asarray(err, np.float64)
    _check_points(path, ids, xyz_a, lambda k: where_ln[k])
    return np.asarray(ids, dtype=np.uint64).reshape(-1), xyz_a, rgb_a, err_a


# ----------------------------------------------------------------------------------------------


def model_files(sparse_dir: Path) -> tuple[str, dict[str, Path]]:
    """('bin'|'txt', {'cameras':..., 'images':..., 'points3D':...}) of a sparse model folder.

    Binary wins when both are present, as in COLMAP. A partial set is an error naming what is missing.
    """
    names = ("cameras", "images", "points3D")
    for ext in ("bin", "txt"):
        files = {n: sparse_dir / f"{n}.{ext}" for n in names}
        present = [n for n, p in files.items() if p.is_file()]
        if len(present) == 3:
            return ext, files
        if present:
            missing = ", ".join(f"{n}.{ext}" for n in names if n not in present)
            raise DatasetError(f"{sparse_dir}: has {', '.join(f'{n}.{ext}' for n in present)} but not {missing}; a COLMAP model needs all three: copy the complete model folder")
    raise DatasetError(f"{sparse_dir}: holds no COLMAP model (cameras/images/points3D .bin or .txt); point --data.params.colmap.sparse_dir at the folder of the model")


def read_model(sparse_dir: str | os.PathLike) -> ColmapModel:
    """Read and validate a COLMAP model folder; raises DatasetError on any defect."""
    sparse_dir = Path(sparse_dir)
    ext, files = model_files(sparse_dir)
    if ext == "bin":
        cameras = read_cameras_bin(files["cameras"])
        images = read_images_bin(files["images"], cameras)
        ids, xyz, rgb, err = read_points3d_bin(files["points3D"])
    else:
        cameras = read_cameras_txt(files["cameras"])
        images = read_images_txt(files["images"], cameras)
        ids, xyz, rgb, err = read_points3d_txt(files["points3D"])
    order = np.argsort(ids, kind="stable")
    return ColmapModel(cameras, images, xyz[order], rgb[order], err[order], ids[order], files)
