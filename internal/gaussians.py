"""GaussianModel: the trainable Gaussians, their activations, progressive SH and PLY I/O.

Every parameter is stored pre-activation, exactly as in the INRIA PLY layout (internal/splats.py):

    means      (N,3)      world positions
    quats      (N,4)      wxyz, any norm (normalised at use)
    scales     (N,3)      log scales (exp at use)
    opacities  (N,)       logits (sigmoid at use)
    sh0        (N,1,3)    DC SH coefficient
    shN        (N,K-1,3)  higher SH bands, K = (sh_degree+1)^2

Parameter identity. Changing the number of Gaussians installs *new* nn.Parameter objects
(`replace_parameters`), never resizes the old ones in place: autograd's gradient accumulator of a
leaf remembers the shape the leaf had when a graph was built and lives as long as any graph through
that leaf is referenced (densification runs between backward and optimizer.step, with the step's
render output and loss still alive; a logger or callback may keep them longer), so a leaf resized in
place can fail a later backward with a shape error. Whatever holds a parameter must therefore be
re-pointed after a replacement: internal/optim.py does that for the optimizer (param groups and
state) in the same call. Read parameters through the model (`model.means`, `model.get_*()`) rather
than keeping references across steps.

Loading a checkpoint is the exception: `load_state_dict` adopts the checkpoint's N in place (same
objects), so an optimizer built before the load stays valid; no graph exists at that point.

Extra per-Gaussian parameters. A renderer may need more per-Gaussian state than the INRIA fields (the
appearance renderer's feature vectors). It declares it with `add_parameter(name, tail, init)`; from
then on the tensor is a Gaussian attribute like the others, with no special case elsewhere: it is in
`param_names`, densification clones/splits/prunes it and the optimizer surgery resizes its Adam state
(both iterate `param_names`), checkpoints carry and resize it, the gradient all-reduce and the
consistency checks of several processes include it. PLY files hold the INRIA fields only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .rasterize.projection import SH_C0
from .splats import Splats, load_from_ply, save_ply

# 3DGS clamps the mean squared neighbour distance here so that duplicate points still get a
# finite log-scale (log(sqrt(1e-7)) ~ -8.06).
_MIN_MEAN_SQ_DIST = 1e-7


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def mean_sq_knn_distance(xyz: Tensor, k: int = 3) -> Tensor:
    """(P,) mean of the squared distances from each point to its k nearest other points.

    Exact (scipy cKDTree, in float64). With fewer than k+1 points the available P-1 neighbours are
    used; a lone point has none and gets the floor value, like a duplicate.
    """
    from scipy.spatial import cKDTree  # scipy is only needed for initialisation

    pts = xyz.detach().to("cpu", torch.float64).numpy()
    p = pts.shape[0]
    out = np.full(p, _MIN_MEAN_SQ_DIST)
    kk = min(k, p - 1)
    if kk > 0:
        # k+1 because the nearest hit is the point itself (distance 0). With duplicates the first
        # zero may belong to the twin instead, but the sorted distances are the same either way.
        dist, _ = cKDTree(pts).query(pts, k=kk + 1)
        out = np.maximum((dist[:, 1:] ** 2).mean(axis=1), _MIN_MEAN_SQ_DIST)
    return torch.from_numpy(out)


class GaussianModel(nn.Module):
    PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")

    def __init__(self, sh_degree: int = 3):
        super().__init__()
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3 (what the PLY layout and the rasterizer support), got {sh_degree}")
        self.sh_degree = sh_degree
        k = (sh_degree + 1) ** 2
        self.means = nn.Parameter(torch.zeros(0, 3))
        self.quats = nn.Parameter(torch.zeros(0, 4))
        self.scales = nn.Parameter(torch.zeros(0, 3))
        self.opacities = nn.Parameter(torch.zeros(0))
        self.sh0 = nn.Parameter(torch.zeros(0, 1, 3))
        self.shN = nn.Parameter(torch.zeros(0, k - 1, 3))
        # A buffer (not a Python int) so that it is checkpointed and a resumed run continues at the
        # degree it had reached.
        self.register_buffer("active_sh_degree", torch.tensor(0, dtype=torch.long))
        # name -> (shape after N, init(n) -> (n, *shape) values for n new Gaussians); see the module doc.
        self._extra: dict[str, tuple[tuple[int, ...], Callable[[int], Tensor]]] = {}

    @property
    def param_names(self) -> tuple[str, ...]:
        """Every per-Gaussian parameter: the INRIA fields (PARAM_NAMES), then those added by add_parameter."""
        return self.PARAM_NAMES + tuple(self._extra)

    def add_parameter(self, name: str, tail: tuple[int, ...], init: Callable[[int], Tensor]) -> None:
        """Declare one more per-Gaussian parameter of shape (N, *tail) (module doc: extra parameters).

        init(n) gives its (n, *tail) values for n new Gaussians: now, for the current N, and whenever the
        model is initialised from points or splats (densification copies parents instead). Declaring the
        same name again with the same shape keeps the current values; another shape is an error.
        """
        tail = tuple(int(t) for t in tail)
        if name in self.PARAM_NAMES or not name.isidentifier() or (hasattr(self, name) and name not in self._extra):
            raise ValueError(f"cannot add a Gaussian parameter named {name!r}: the name is taken or not an identifier")
        if name in self._extra:
            if self._extra[name][0] != tail:
                raise ValueError(f"Gaussian parameter {name!r} exists with shape (N,{','.join(map(str, self._extra[name][0]))}), not (N,{','.join(map(str, tail))})")
            self._extra[name] = (tail, init)
            return
        self._extra[name] = (tail, init)
        value = self._initial(name, self.num_gaussians).to(self.means.device)
        self.register_parameter(name, nn.Parameter(value.clone(memory_format=torch.contiguous_format)))

    def _initial(self, name: str, n: int) -> Tensor:
        tail, init = self._extra[name]
        value = init(n).to(torch.float32)
        if tuple(value.shape) != (n, *tail):
            raise ValueError(f"the initialiser of Gaussian parameter {name!r} gave shape {tuple(value.shape)}, expected {(n, *tail)}")
        return value

    def _initial_extras(self, n: int) -> dict[str, Tensor]:
        return {name: self._initial(name, n) for name in self._extra}

    # ---------------------------------------------------------------- shapes and activations

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def get_means(self) -> Tensor:
        return self.means

    def get_quats(self) -> Tensor:
        return self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def get_scales(self) -> Tensor:
        return torch.exp(self.scales)

    def get_opacities(self) -> Tensor:
        return torch.sigmoid(self.opacities)

    def get_sh(self) -> Tensor:
        """(N,K,3) all SH coefficients; the rasterizer uses the first (active_sh_degree+1)^2."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def sh_pair(self) -> tuple[Tensor, Tensor]:
        """The SH coefficients as rasterize() takes them without a copy: (sh0 (N,1,3), shN (N,K-1,3))."""
        return self.sh0, self.shN

    def step_sh_degree(self) -> int:
        """Enable one more SH band (no-op at sh_degree). Returns the new active degree."""
        if int(self.active_sh_degree) < self.sh_degree:
            self.active_sh_degree += 1  # in place: the registered buffer stays the same tensor
        return int(self.active_sh_degree)

    # ---------------------------------------------------------------- replacing the Gaussians

    def _expected_tail(self, name: str) -> tuple[int, ...]:
        if name in self._extra:
            return self._extra[name][0]
        return {
            "means": (3,),
            "quats": (4,),
            "scales": (3,),
            "opacities": (),
            "sh0": (1, 3),
            "shN": ((self.sh_degree + 1) ** 2 - 1, 3),
        }[name]

    @torch.no_grad()
    def replace_parameters(self, new: dict[str, Tensor]) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """Install new nn.Parameter objects for some or all parameters (see the module doc for why).

        Values are copied into fresh contiguous storage of each parameter's dtype and device: the
        optimizer updates parameters in place, which must neither write into the caller's tensors
        (a Splats, a point cloud) nor hit an expanded view whose rows share memory. The new
        parameters have no .grad and the old one's requires_grad. After the swap all parameters must
        agree on N. Returns {name: (old, new)} so that holders of the old objects can be re-pointed.
        An optimizer built on this model must be updated through internal/optim.py instead.
        """
        unknown = set(new) - set(self.param_names)
        if unknown:
            raise KeyError(f"unknown Gaussian parameter(s) {sorted(unknown)}; expected names from {self.param_names}")
        for name, value in new.items():
            tail = self._expected_tail(name)
            if tuple(value.shape[1:]) != tail:
                raise ValueError(f"{name} must be (N,{','.join(map(str, tail))}), got {tuple(value.shape)}")
        sizes = {name: (new[name] if name in new else getattr(self, name)).shape[0] for name in self.param_names}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"parameters would disagree on the number of Gaussians: {sizes}")
        swapped = {}
        for name, value in new.items():
            old: nn.Parameter = getattr(self, name)
            data = value.detach().to(dtype=old.dtype, device=old.device).clone(memory_format=torch.contiguous_format)
            setattr(self, name, nn.Parameter(data, requires_grad=old.requires_grad))
            swapped[name] = (old, getattr(self, name))
        return swapped

    @torch.no_grad()
    def init_from_points(self, xyz: Tensor, rgb: Tensor, init_opacity: float = 0.1, init_scale_factor: float = 1.0) -> None:
        """Start from a point cloud (SfM points or random points), as 3DGS does.

        Isotropic scale = sqrt(mean squared distance to the 3 nearest neighbours) x init_scale_factor,
        identity rotation, opacity init_opacity, colour rgb as the DC SH term, higher bands zero.
        Tensors go to the model's current device. Resets the active SH degree to 0. Installs new
        parameters: build the optimizer afterwards.
        """
        if xyz.dim() != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
            raise ValueError(f"xyz and rgb must both be (P,3), got {tuple(xyz.shape)} and {tuple(rgb.shape)}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0,1), got {init_opacity}")
        p = xyz.shape[0]
        dist = torch.sqrt(mean_sq_knn_distance(xyz)) * init_scale_factor
        log_scale = torch.log(dist).to(torch.float32)[:, None].expand(p, 3)
        quats = torch.zeros(p, 4)
        quats[:, 0] = 1.0
        self.replace_parameters(
            {
                "means": xyz.to(torch.float32),
                "quats": quats,
                "scales": log_scale,
                "opacities": torch.full((p,), logit(init_opacity)),
                "sh0": ((rgb.to(torch.float32) - 0.5) / SH_C0)[:, None, :],
                "shN": torch.zeros(p, (self.sh_degree + 1) ** 2 - 1, 3),
                **self._initial_extras(p),
            }
        )
        self.active_sh_degree.fill_(0)

    # ---------------------------------------------------------------- Splats and PLY files

    @torch.no_grad()
    def load_splats(self, splats: Splats) -> None:
        """Take the Gaussians of `splats` into this model (in place).

        SH bands beyond this model's degree are dropped, missing ones are zero. The active degree
        becomes the highest degree the splats actually carry: those bands are trained. Installs new
        parameters: build the optimizer afterwards.
        """
        k1 = (self.sh_degree + 1) ** 2 - 1
        n = len(splats)
        shn = splats.shN[:, :k1]
        if shn.shape[1] < k1:
            shn = torch.cat([shn, shn.new_zeros(n, k1 - shn.shape[1], 3)], dim=1)
        self.replace_parameters(
            {
                "means": splats.means,
                "quats": splats.quats,
                "scales": splats.scales,
                "opacities": splats.opacities,
                "sh0": splats.sh0,
                "shN": shn,
                **self._initial_extras(n),
            }
        )
        self.active_sh_degree.fill_(min(splats.sh_degree, self.sh_degree))

    @classmethod
    def from_splats(cls, splats: Splats, sh_degree: int | None = None) -> "GaussianModel":
        """A new model holding `splats` (sh_degree defaults to the splats' own degree)."""
        model = cls(splats.sh_degree if sh_degree is None else sh_degree)
        model.load_splats(splats)
        return model

    @classmethod
    def load_ply(cls, path, sh_degree: int | None = None) -> "GaussianModel":
        """A new model from an INRIA-layout PLY file."""
        return cls.from_splats(load_from_ply(path), sh_degree)

    def to_splats(self) -> Splats:
        """Detached float32 CPU copies of the parameters, pre-activation."""

        def copy(t: Tensor) -> Tensor:
            return t.detach().to("cpu", torch.float32).clone()

        return Splats(**{name: copy(getattr(self, name)) for name in self.PARAM_NAMES})

    def save_ply(self, path) -> Path:
        return save_ply(self.to_splats(), path)

    # ---------------------------------------------------------------- checkpoints with another N

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A checkpoint saved after densification holds a different number of Gaussians than a freshly
        # built model: take the checkpoint's N before the default loader copies (it requires equal shapes).
        resize_to_state_dict(self, state_dict, prefix, self.param_names)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        extra = "".join(f", {name}=(N,{','.join(map(str, tail))})" for name, (tail, _) in self._extra.items())
        return f"num_gaussians={self.num_gaussians}, sh_degree={self.sh_degree}, active_sh_degree={int(self.active_sh_degree)}{extra}"


@torch.no_grad()
def resize_to_state_dict(module: nn.Module, state_dict: dict, prefix: str, names) -> None:
    """Give the named parameters/buffers of `module` the leading size found in `state_dict`.

    Only the first (per-Gaussian) dimension is adopted; any other mismatch (e.g. another SH degree) is
    left for the default loader to report. Parameters keep their identity (storage swap), buffers are
    re-registered; the values are then filled in by the regular load.
    """
    for name in names:
        key = prefix + name
        if key not in state_dict:
            continue
        saved = state_dict[key]
        current = getattr(module, name)
        if saved.shape == current.shape or saved.dim() != current.dim() or saved.shape[1:] != current.shape[1:]:
            continue
        fresh = current.new_zeros(saved.shape)
        if isinstance(current, nn.Parameter):
            current.data = fresh
            current.grad = None
        else:
            setattr(module, name, fresh)


__all__ = ["GaussianModel", "mean_sq_knn_distance", "resize_to_state_dict", "logit"]
