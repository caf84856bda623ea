"""What a user points at -> something renderable, for viewer.py, render.py and every other tool.

    model = load_model("outputs/lego")             # a checkpoint of ours, an output folder or any INRIA .ply
    out = render_view(model, viewmat, K, 1280, 720)   # RenderOutput: colors, alphas, depths (1,H,W,.)

`render_view` is the one path every tool renders through (the viewer, render.py, exports); it calls
internal.rasterize.rasterize like training does, so what a tool shows is what training rendered.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoints import GAUSSIAN_NAMES, CheckpointError, read_checkpoint
from .rasterize import RenderOutput, rasterize
from .splats import PlyFormatError, Splats, load_from_ply
from .trajectories import look_at

_ACCEPTED = "a checkpoint of ours (*.ckpt), an output folder (outputs/<name>) or a Gaussian .ply"
_CHECKPOINT_FIX = ("pass another checkpoint training wrote (outputs/<name>/checkpoints/*.ckpt), the output folder, or its "
                   "exported point_cloud/iteration_*/point_cloud.ply")


class ModelLoadError(Exception):
    """What the user pointed at cannot be loaded; the message is one line naming the path and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class LoadedModel:
    splats: Splats  # pre-activation INRIA fields (as load_from_ply gives)
    source: Path  # the file actually loaded
    step: int | None  # training step when known
    cameras: list[dict] | None  # cameras.json entries of the output folder (3DGS layout), when found
    background: tuple[float, float, float]  # the training background when known, else (0,0,0)
    renderer: torch.nn.Module | None  # the checkpoint's renderer rebuilt with its weights (None for a .ply)
    appearance_groups: list[str]  # group names when the renderer has an appearance model, else []
    # The checkpoint's other per-Gaussian parameters (e.g. an appearance model's features), rows in the
    # order of `splats` (sort_by_visibility reorders them with the splats); the renderer reads them by name.
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)
    # Activated tensors for rasterize(), reused while the splats are unchanged (see activated_gaussians).
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_gaussians(self) -> int:
        return len(self.splats)

    @property
    def sh_degree(self) -> int:
        return self.splats.sh_degree

    def splats_for_group(self, appearance_group: str | None = None) -> Splats:
        """The splats with `appearance_group`'s look baked into their SH, for exports and viewers without
        the appearance model (the renderer's bake_group: exact wherever SH + 0.5 >= 0); default the first
        group, as PLY exports. A model without groups: its splats (and an error for a named group)."""
        if not self.appearance_groups:
            check_appearance_group(self, appearance_group)
            return self.splats
        name = self.appearance_groups[check_appearance_group(self, appearance_group) or 0]
        features = self.extras[self.renderer.feature_key]
        return self.renderer.bake_group(self.splats, features.to(self.splats.sh0), name)


# ---------------------------------------------------------------- which file

def _file_kind(path: Path) -> str | None:
    """'ckpt', 'ply' or None, from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".ckpt":
        return "ckpt"
    if suffix == ".ply":
        return "ply"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"ply"):
        return "ply"
    if head == b"PK\x03\x04":  # torch.save's zip container
        return "ckpt"
    return None


def checkpoint_step(path: Path) -> int | None:
    """The training step of a checkpoint: from `step=S` in its name, else the global_step it holds."""
    m = re.search(r"step=(\d+)", path.name)
    if m:
        return int(m.group(1))
    try:
        ckpt = _torch_load(path, mmap=True)
    except Exception:  # an unreadable file ranks last; load_model reports it if it is chosen
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) else None


def resolve_model_path(path) -> Path:
    """The file to load for what the user pointed at.

    A *.ckpt -> itself; a .ply -> itself; an output folder -> the checkpoint with the highest step in
    checkpoints/ (step=S.ckpt by its name, last.ckpt by the global_step it holds), else the newest
    point_cloud/iteration_*/point_cloud.ply. Raises ModelLoadError otherwise.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder; pass {_ACCEPTED}")
    if path.is_file():
        if _file_kind(path) is None:
            raise ModelLoadError(f"{path}: neither a checkpoint (*.ckpt) nor a .ply file; pass {_ACCEPTED}")
        return path
    folders = [path / "checkpoints", path]
    ckpts = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.ckpt")) if p.is_file()]
    if ckpts:
        ranked = [(checkpoint_step(p), p) for p in ckpts]
        # Highest step first; on a tie the named step=S file (its step is certain), then by name.
        ranked.sort(key=lambda sp: (-1 if sp[0] is None else sp[0], "step=" in sp[1].name, sp[1].name))
        return ranked[-1][1]
    plys = []
    for p in (path / "point_cloud").glob("iteration_*/point_cloud.ply"):
        m = re.fullmatch(r"iteration_(\d+)", p.parent.name)
        if m and p.is_file():
            plys.append((int(m.group(1)), p))
    if plys:
        return max(plys)[1]
    direct = sorted(p for p in path.glob("*.ply") if p.is_file())
    if len(direct) == 1:
        return direct[0]
    raise ModelLoadError(
        f"{path}: a folder without checkpoints/*.ckpt or point_cloud/iteration_*/point_cloud.ply; "
        f"pass {_ACCEPTED} (train one with `python main.py fit`)"
    )


# ---------------------------------------------------------------- loading

def _torch_load(path: Path, mmap: bool = False):
    # weights_only: our checkpoints hold tensors, containers and plain values only (Lightning's
    # hyper-parameters included), so nothing in a file needs unpickling code. mmap keeps a large
    # checkpoint on disk until its tensors are touched.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _output_folder(source: Path) -> Path | None:
    """outputs/<name> for a file inside it (checkpoints/x.ckpt, point_cloud/iteration_S/point_cloud.ply)."""
    for parent in list(source.parents)[:3]:
        if (parent / "cameras.json").is_file() or (parent / "checkpoints").is_dir() or (parent / "config.yaml").is_file():
            return parent
    return None


def read_cameras_json(path: Path) -> list[dict] | None:
    """cameras.json entries (3DGS layout), or None when absent or unusable (a viewer can do without)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entries, list):
        return None
    good = []
    for e in entries:
        try:
            pos = np.asarray(e["position"], dtype=np.float64).reshape(3)
            rot = np.asarray(e["rotation"], dtype=np.float64).reshape(3, 3)
            w, h, fx, fy = int(e["width"]), int(e["height"]), float(e["fx"]), float(e["fy"])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(pos).all() and np.isfinite(rot).all() and w > 0 and h > 0 and fx > 0 and fy > 0:
            good.append(e)
    return good or None


def _load_checkpoint(source: Path, device) -> LoadedModel:
    try:
        ckpt = read_checkpoint(source, fix=_CHECKPOINT_FIX, weights_only=True)  # readable, ours, finite Gaussians
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from exc
    state = ckpt["state_dict"]
    # Copies: the checkpoint is memory-mapped, and the model must not depend on the file staying as it is.
    g = {k: state[f"gaussians.{k}"].detach().to(torch.float32).clone() for k in GAUSSIAN_NAMES}
    n = g["means"].shape[0]
    extras = {k[len("gaussians."):]: v.detach().to(torch.float32).clone() for k, v in state.items()
              if k.startswith("gaussians.") and k[len("gaussians."):] not in GAUSSIAN_NAMES
              and isinstance(v, Tensor) and v.is_floating_point() and v.dim() >= 1 and v.shape[0] == n}
    active = state.get("gaussians.active_sh_degree")
    max_degree = int(round((g["shN"].shape[1] + 1) ** 0.5)) - 1
    degree = max_degree if active is None else min(int(active), max_degree)
    # Bands above the active degree were never trained (they hold zeros); rendering stops where training did.
    shN = g["shN"][:, : (degree + 1) ** 2 - 1]
    splats = Splats(means=g["means"], quats=g["quats"], scales=g["scales"], opacities=g["opacities"].reshape(-1),
                    sh0=g["sh0"], shN=shN)
    bg = state.get("scene_background")
    background = tuple(float(v) for v in bg.reshape(-1)[:3]) if isinstance(bg, Tensor) and bg.numel() >= 3 else (0.0, 0.0, 0.0)
    renderer = _rebuild_renderer(source, ckpt, state)
    folder = _output_folder(source)
    step = ckpt.get("global_step")
    return LoadedModel(
        splats=splats.to(device),
        source=source,
        step=int(step) if isinstance(step, int) else None,
        cameras=read_cameras_json(folder / "cameras.json") if folder else None,
        background=background,
        renderer=renderer.to(device) if renderer is not None else None,
        appearance_groups=list(getattr(renderer, "group_names", None) or []),
        extras={k: v.to(device) for k, v in extras.items()},
    )


def _rebuild_renderer(source: Path, ckpt: dict, state: dict) -> torch.nn.Module | None:
    """The checkpoint's renderer (class path and constructor arguments saved by the module) with its weights."""
    spec = ckpt.get("gs_renderer")
    if not isinstance(spec, dict) or "class_path" not in spec:
        return None
    class_path = str(spec["class_path"])
    module_name, _, cls_name = class_path.rpartition(".")
    if not module_name.startswith("internal."):
        raise ModelLoadError(f"{source}: its renderer {class_path!r} is not one of this project's (internal.*)")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
        renderer = cls(**dict(spec.get("init_args") or {}))
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{source}: its renderer {class_path} cannot be rebuilt here ({exc}); update this program to the version "
            "that trained it"
        ) from exc
    weights = {k[len("renderer."):]: v for k, v in state.items() if k.startswith("renderer.")}
    try:
        renderer.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{source}: the renderer's weights do not fit {class_path} ({str(exc).splitlines()[0]})") from exc
    return renderer.eval()


def _background_of_output(folder: Path | None) -> tuple[float, float, float]:
    """The training background from a checkpoint beside an exported .ply (cheap: mmap, one buffer read)."""
    if folder is None or not (folder / "checkpoints").is_dir():
        return (0.0, 0.0, 0.0)
    for p in sorted((folder / "checkpoints").glob("*.ckpt")):
        try:
            bg = _torch_load(p, mmap=True)["state_dict"]["scene_background"]
            return tuple(float(v) for v in bg.reshape(-1)[:3])
        except Exception:
            continue
    return (0.0, 0.0, 0.0)


def load_model(path, device="cpu") -> LoadedModel:
    """Load what `path` names (see resolve_model_path) onto `device`. Raises ModelLoadError, one line."""
    source = resolve_model_path(path)
    if _file_kind(source) == "ckpt":
        return _load_checkpoint(source, device)
    try:
        splats = load_from_ply(source)
    except PlyFormatError as exc:
        raise ModelLoadError(str(exc)) from exc
    folder = _output_folder(source)
    m = re.fullmatch(r"iteration_(\d+)", source.parent.name)
    return LoadedModel(
        splats=splats.to(device),
        source=source,
        step=int(m.group(1)) if m else None,
        cameras=read_cameras_json(folder / "cameras.json") if folder else None,
        background=_background_of_output(folder),
        renderer=None,
        appearance_groups=[],
    )


# ---------------------------------------------------------------- rendering

def activated_gaussians(model: LoadedModel):
    """(means, unit quats, scales, opacities, sh) of the model's splats, cached while they are unchanged.

    The key holds the tensors' identities and version counters, so in-place updates (a live training run
    whose optimizer steps the parameters) and replaced splats are both noticed.
    """
    s = model.splats
    tensors = (s.means, s.quats, s.scales, s.opacities, s.sh0, s.shN)
    key = tuple((id(t), t._version) for t in tensors)
    if model._cache.get("key") != key:
        model._cache.clear()
        with torch.no_grad():
            model._cache["value"] = tuple(t.contiguous() for t in s.to(dtype=torch.float32).activated())
        model._cache["key"] = key
    return model._cache["value"]


def check_appearance_group(model: LoadedModel, appearance_group) -> int | None:
    """The index of `appearance_group` in the model's groups (None for None); ValueError naming the choices."""
    if appearance_group is None:
        return None
    groups = list(model.appearance_groups)
    if not groups:
        raise ValueError(
            f"appearance_group={appearance_group!r}, but {model.source} has no appearance groups (it was trained "
            "without an appearance model); leave the group unset"
        )
    if appearance_group not in groups:
        raise ValueError(f"appearance_group={appearance_group!r} is not one of this model's groups: {', '.join(groups)}")
    return groups.index(appearance_group)


@torch.no_grad()
def render_view(
    model: LoadedModel,
    viewmat,
    K,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background=None,
    appearance_group: str | None = None,
    scaling_modifier: float = 1.0,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    max_gaussians: int | None = None,
) -> RenderOutput:
    """Render one view of a loaded model.

    Args:
        viewmat: (4,4) world-to-camera, OpenCV axes (x right, y down, z forward).
        K: (3,3) intrinsics, pixel centres at +0.5.
        width, height: image size in pixels.
        sh_degree: SH degree to evaluate (default: all the model has).
        background: RGB in [0,1] (default: the training background).
        appearance_group: a name from model.appearance_groups (models with an appearance model only;
            None renders their first group, as PLY exports do).
        scaling_modifier: multiplies every Gaussian's scale (1 = as trained).
        near, far: depth range of the Gaussians drawn.
        backend: rasterizer backend ("auto": gsplat on CUDA, else our native CPU rasterizer).
        max_gaussians: draw only the first this many Gaussians (a zero-copy prefix; the viewer orders a
            model by visibility with sort_by_visibility and draws fewer while the camera moves).
    Returns:
        RenderOutput with colors (1,H,W,3) on the background, alphas (1,H,W,1), depths (1,H,W,1) expected
        depth (0 where nothing was drawn), means2d, radii.
    """
    group = check_appearance_group(model, appearance_group)
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if not (math.isfinite(scaling_modifier) and scaling_modifier > 0):
        raise ValueError(f"scaling_modifier must be a positive number, got {scaling_modifier}")
    available = model.splats.sh_degree
    degree = available if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= available:
        raise ValueError(f"sh_degree={sh_degree}, but this model carries SH degree 0..{available}")
    means, quats, scales, opacities, sh = activated_gaussians(model)
    if max_gaussians is not None and 0 <= int(max_gaussians) < means.shape[0]:
        k = int(max_gaussians)
        means, quats, scales, opacities, sh = means[:k], quats[:k], scales[:k], opacities[:k], sh[:k]
    device, dtype = means.device, means.dtype
    viewmat = torch.as_tensor(viewmat, dtype=dtype, device=device).reshape(1, 4, 4)
    K = torch.as_tensor(K, dtype=dtype, device=device).reshape(1, 3, 3)
    if not (torch.isfinite(viewmat).all() and torch.isfinite(K).all()):
        raise ValueError("viewmat and K must be finite (found NaN or inf)")
    bg = torch.as_tensor(model.background if background is None else background, dtype=dtype, device=device).reshape(-1)
    if bg.numel() != 3:
        raise ValueError(f"background must be 3 values (RGB in [0,1]), got {bg.numel()}")
    if scaling_modifier != 1.0:
        scales = scales * float(scaling_modifier)
    if model.appearance_groups:
        return _render_with_renderer(model, means, quats, scales, opacities, sh, degree, viewmat, K, width, height,
                                     bg, group or 0, near, far, backend)
    return rasterize(means, quats, scales, opacities, sh, viewmat, K, width, height, near=near, far=far,
                     sh_degree=degree, backgrounds=bg, backend=backend)


def visibility_score(opacities: Tensor, scales: Tensor) -> Tensor:
    """How much an (activated) Gaussian shows: opacity x the area of its footprint (geometric-mean scale squared)."""
    return opacities * torch.exp(torch.log(scales.clamp_min(1e-12)).mean(dim=-1) * 2.0)


@torch.no_grad()
def sort_by_visibility(model: LoadedModel) -> LoadedModel:
    """The model with its Gaussians reordered, most visible first (the picture is the same: the rasterizer
    sorts by depth), so that any prefix (render_view's max_gaussians) holds the ones that show most."""
    _, _, scales, opacities, _ = activated_gaussians(model)
    order = torch.argsort(visibility_score(opacities, scales), descending=True, stable=True)
    s = model.splats
    splats = Splats(means=s.means[order], quats=s.quats[order], scales=s.scales[order], opacities=s.opacities[order],
                    sh0=s.sh0[order], shN=s.shN[order], normals=None if s.normals is None else s.normals[order])
    return LoadedModel(splats=splats, source=model.source, step=model.step, cameras=model.cameras,
                       background=model.background, renderer=model.renderer,
                       appearance_groups=list(model.appearance_groups),
                       extras={k: v[order.to(v.device)] for k, v in model.extras.items()})


class _GaussiansView:
    """The read side of a GaussianModel over already-activated tensors, for a renderer's forward: get_*,
    the raw means/quats/sh0 (quaternions of any norm: the rasterizer normalises them; SH are not
    activated) and the extra per-Gaussian parameters by name."""

    def __init__(self, means, quats, scales, opacities, sh, degree: int, extras: dict | None = None):
        self._t = (means, quats, scales, opacities, sh)
        self.active_sh_degree = torch.tensor(degree)
        self.sh_degree = degree
        self.num_gaussians = means.shape[0]
        self.means, self.quats, self.sh0 = means, quats, sh[:, :1]
        for name, value in (extras or {}).items():
            setattr(self, name, value)

    def get_means(self):
        return self._t[0]

    def get_quats(self):
        return self._t[1]

    def get_scales(self):
        return self._t[2]

    def get_opacities(self):
        return self._t[3]

    def get_sh(self):
        return self._t[4]

    def sh_pair(self):
        sh = self._t[4]
        return sh[:, :1], sh[:, 1:]  # views: the cpu backend reads them in place


def _render_with_renderer(model, means, quats, scales, opacities, sh, degree, viewmat, K, width, height, bg, group,
                          near=0.01, far=1e10, backend="auto"):
    """A renderer with appearance groups (CONTRACTS.md 3): one camera whose appearance_id is the group index.
    The renderer draws with render_view's near/far/backend (a shallow copy: its weights are shared, the
    checkpoint's training backend is not imposed on a viewer)."""
    from .data.cameras import Cameras

    c = viewmat[0].cpu()
    k = K[0].cpu()
    cams = Cameras.from_numpy(
        c[:3, :3], c[:3, 3], k[0, 0], k[1, 1], k[0, 2], k[1, 2], [width], [height], appearance_id=[group]
    ).to(means.device)
    # extras follow the splats row for row; a prefix of the Gaussians (fewer drawn) takes their prefix.
    key = getattr(model.renderer, "feature_key", None)
    if key is not None and (key not in model.extras or model.extras[key].shape[0] < means.shape[0]):
        raise ValueError(f"this LoadedModel lacks the per-Gaussian {key!r} its renderer needs (extras: "
                         f"{sorted(model.extras)}); whoever copies or reorders a model's splats must carry "
                         "`extras` along, row for row")
    extras = {k: v[: means.shape[0]] for k, v in model.extras.items()}
    view = _GaussiansView(means, quats, scales, opacities, sh, degree, extras)
    renderer = model.renderer
    if all(hasattr(renderer, a) for a in ("backend", "near", "far")):
        renderer = copy.copy(renderer)
        renderer.backend, renderer.near, renderer.far = backend, near, far
    return renderer(view, cams, bg, sh_degree=degree)


# ---------------------------------------------------------------- cameras for tools

def camera_entry_c2w(entry: dict) -> np.ndarray:
    """(4,4) camera-to-world (OpenCV axes) of a cameras.json entry (position = centre, rotation = c2w 3x3)."""
    c2w = np.eye(4)
    c2w[:3, :3] = np.asarray(entry["rotation"], dtype=np.float64).reshape(3, 3)
    c2w[:3, 3] = np.asarray(entry["position"], dtype=np.float64).reshape(3)
    return c2w


def intrinsics(fov_y: float, width: int, height: int) -> np.ndarray:
    """(3,3) K of a pinhole camera with square pixels, vertical fov `fov_y` (radians), centred principal point."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def robust_bounds(splats: Splats, quantile: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-size) of the box holding the Gaussians between the quantile and 1-quantile on each axis
    (stray floaters far away do not drag the view out)."""
    means = splats.means.detach().to("cpu", torch.float32)
    if means.shape[0] > 200_000:  # a sample is as good for quantiles and much faster
        idx = torch.randperm(means.shape[0], generator=torch.Generator().manual_seed(0))[:200_000]
        means = means[idx]
    if means.shape[0] == 0:
        return np.zeros(3), np.ones(3)
    lo = torch.quantile(means, quantile, dim=0).numpy().astype(np.float64)
    hi = torch.quantile(means, 1.0 - quantile, dim=0).numpy().astype(np.float64)
    return (lo + hi) / 2.0, np.maximum((hi - lo) / 2.0, 1e-6)


def estimate_up(cameras: list[dict] | None) -> np.ndarray:
    """World up from the training cameras (the mean of their -y axes, as cameras are held upright), else +z."""
    if cameras:
        ups = np.stack([-camera_entry_c2w(e)[:3, 1] for e in cameras])
        mean = ups.mean(axis=0)
        n = np.linalg.norm(mean)
        if n > 1e-6:
            return mean / n
    return np.array([0.0, 0.0, 1.0])


def default_view(model: LoadedModel, fov_y: float = math.radians(50.0)) -> tuple[np.ndarray, float]:
    """A first view that frames the content: (c2w (4,4), vertical fov in radians).

    The first training camera when cameras.json is there, else a camera outside the Gaussians' robust
    bounding box looking at its centre, tilted down a little from the estimated up direction.
    """
    if model.cameras:
        e = model.cameras[0]
        return camera_entry_c2w(e), 2.0 * math.atan(0.5 * int(e["height"]) / float(e["fy"]))
    centre, half = robust_bounds(model.splats)
    up = estimate_up(None)
    radius = float(np.linalg.norm(half))
    distance = radius / math.sin(0.5 * fov_y) if radius > 0 else 1.0
    # Horizontal direction away from the centre, raised 30 degrees above the horizon.
    horizontal = np.array([1.0, -1.0, 0.0]) / math.sqrt(2.0)
    direction = math.cos(math.radians(30)) * horizontal + math.sin(math.radians(30)) * up
    return look_at(centre + distance * direction, centre, up), fov_y


__all__ = [
    "ModelLoadError", "LoadedModel", "resolve_model_path", "load_model", "render_view", "checkpoint_step",
    "read_cameras_json", "check_appearance_group", "camera_entry_c2w", "intrinsics", "robust_bounds", "look_at",
    "estimate_up", "default_view", "activated_gaussians", "visibility_score", "sort_by_visibility",
]
