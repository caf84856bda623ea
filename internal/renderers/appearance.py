"""AppearanceMLPRenderer: 3DGS whose colours change with the image group's look (exposure, white
balance, tone), so that photo collections with varying appearance do not bake it into the Gaussians.

    python main.py fit ... --model.renderer AppearanceMLPRenderer --data.params.colmap.appearance_groups NAME

The model. Each Gaussian i carries a learnt feature f_i (`feature_dim`; an extra per-Gaussian parameter
of the GaussianModel, so it is densified, pruned and optimised with the Gaussians), each appearance
group g a learnt embedding e_g (`embedding_dim`). An MLP (`hidden_layers` ReLU layers of
`hidden_width`) maps the group's embedding to a matrix M_g (6 x (feature_dim + 4)), and each Gaussian's
SH colour c_i(view) gets a per-channel affine transform that is linear in its own inputs:

    [a_i, b_i] = M_g [f_i; sg(c0_i); 1]         c0_i = the SH DC colour, gradient stopped
    colour     = max((1 + a_i) * c_i(view) + b_i, 0)      c_i(view) = plain 3DGS's colour max(SH + 0.5, 0)

Why this shape (bench/appearance.py measures it):
- Cost. The original (and gsplat) run their MLP on every Gaussian for every camera. On a CPU that is
  the size of the whole training step: a 2x64 MLP over 112k Gaussians took about as long as the
  rasterizer's forward and backward together. Here the MLP runs once per camera (on the embedding)
  and each Gaussian costs 6 x (feature_dim + 4) multiply-adds.
- Expressiveness where the variation is. An affine change per channel is what exposure (scale),
  white balance (scale per channel) and black level (offset) are, and saturation is affine in the
  colour too (c' = s c + (1 - s) lum(c)): one matrix per group reproduces them exactly, whatever the
  Gaussian. Tone curves (gamma, contrast) become quadratic in the colour, and the per-Gaussian feature
  carries anything else, local effects included: for up to feature_dim + 4 groups any per-Gaussian,
  per-group colour transform is representable, beyond that a low-rank one.
- It starts as plain 3DGS: the MLP's output layer is zero, so M_g = 0 and the render is bit-identical
  to VanillaRenderer's; for `warm_up` steps the appearance model is not evaluated at all (SH alone
  learn the common look). It has its own learning rates (features, embeddings, MLP), decayed by
  `lr_final_factor` over training.
- The transform does not depend on the view direction, so it bakes into the SH (every band scaled by
  1 + a, b added to the DC term; exact wherever SH + 0.5 >= 0, i.e. wherever plain 3DGS does not clamp):
  `export_splats(group)` writes a PLY that other viewers show in that group's look.

Evaluation (`render_for_evaluation`): a view whose group was trained renders with that group's
embedding ("own_group"). A view whose group never appeared in training (e.g. one group per image)
gets the NeRF-W protocol: its embedding alone is optimised on the left half of the image (Gaussians
and MLP frozen) and only the right half is scored ("nerfw_right_half").
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..optim import exp_lr, param_group
from ..rasterize import RenderOutput, shade
from ..rasterize.projection import SH_C0
from .vanilla import VanillaRenderer

FEATURES = "appearance_features"  # the per-Gaussian parameter this renderer adds to the GaussianModel
PROTOCOL_OWN_GROUP = "own_group"
PROTOCOL_NERFW = "nerfw_right_half"


def _init_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """nn.Linear's default initialisation (uniform, bound 1/sqrt(fan_in)) from a given generator, so
    that every process builds bit-identical weights whatever the global RNG did before."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


def affine_coefficients(features: Tensor, base: Tensor, matrices: Tensor) -> Tensor:
    """(C,N,6) [a, b] = M_g [f; c0; 1] for features (N,F), base colours (N,3), matrices (C,6,F+4)."""
    f = features.shape[1]
    out = []
    for m in matrices:
        ab = torch.addmm(m[:, -1], features, m[:, :f].t())
        out.append(ab.addmm_(base, m[:, f:f + 3].t()))
    return torch.stack(out)


class _AffineColors(torch.autograd.Function):
    """max((1 + a) * c + b, 0) with [a, b] = M [f; c0; 1], forward and backward by hand. Autograd through
    a batched matmul and slices spent most of its time in skinny bmm kernels and zero-filled slice
    gradients: 29.3 -> 12.5 ms forward + backward for 112k Gaussians (medians, interleaved, loaded machine)."""

    @staticmethod
    def forward(ctx, colors, features, base, matrices):
        ab = affine_coefficients(features, base, matrices)  # (C,N,6)
        v = torch.addcmul(ab[..., 3:], colors, ab[..., :3]).add_(colors)  # (1 + a) c + b
        keep = v >= 0  # clamp_min's gradient rule: pass where the input is >= 0
        ctx.save_for_backward(colors, features, base, matrices, ab, keep)
        return v.clamp_min_(0.0)

    @staticmethod
    def backward(ctx, grad):
        colors, features, base, matrices, ab, keep = ctx.saved_tensors
        f = features.shape[1]
        g = grad * keep
        g_colors = torch.addcmul(g, g, ab[..., :3]) if ctx.needs_input_grad[0] else None
        g_ab = torch.cat([g * colors, g], dim=-1)  # (C,N,6): d/da, d/db
        g_features = None
        g_matrices = torch.empty_like(matrices) if ctx.needs_input_grad[3] else None
        for c in range(matrices.shape[0]):
            if ctx.needs_input_grad[1]:
                part = g_ab[c] @ matrices[c, :, :f]
                g_features = part if g_features is None else g_features.add_(part)
            if g_matrices is not None:
                gt = g_ab[c].t()
                g_matrices[c, :, :f] = gt @ features
                g_matrices[c, :, f:f + 3] = gt @ base
                g_matrices[c, :, -1] = g_ab[c].sum(0)
        return g_colors, g_features, None, g_matrices


def affine_colors(colors: Tensor, features: Tensor, base: Tensor, matrices: Tensor) -> Tensor:
    """(C,N,3) max((1 + a) * colors + b, 0), [a, b] = M_g [f; c0; 1] per camera (module docstring).

    colors (C,N,3) SH colours, features (N,F), base (N,3) DC colours (no gradient), matrices (C,6,F+4).
    Differentiable w.r.t. colors, features and matrices.
    """
    return _AffineColors.apply(colors, features, base.detach(), matrices)


class AppearanceMLPRenderer(VanillaRenderer):
    """3DGS with a per-group appearance model (module docstring).

    Args:
        backend, near, far: as VanillaRenderer.
        feature_dim: per-Gaussian appearance feature size.
        embedding_dim: per-group embedding size.
        hidden_layers, hidden_width: the MLP's hidden ReLU layers (embedding -> M_g).
        warm_up: training steps with SH alone before the appearance model is used.
        features_lr, embedding_lr, mlp_lr: Adam learning rates, decayed exponentially to
            `lr_final_factor` x themselves between `warm_up` and the end of training.
        eval_embedding_steps, eval_embedding_lr: Adam steps and rate fitting an untrained group's
            embedding on the left half of a validation/test image (NeRF-W protocol).
        seed: seed of the initial features, embeddings and MLP weights (the same on every process).
    """

    feature_key = FEATURES  # the per-Gaussian parameter holding the features (loading.py reads it by this name)

    def __init__(
        self,
        backend: str = "auto",
        near: float = 0.01,
        far: float = 1e10,
        feature_dim: int = 16,
        embedding_dim: int = 32,
        hidden_layers: int = 2,
        hidden_width: int = 64,
        warm_up: int = 1000,
        features_lr: float = 2.5e-3,
        embedding_lr: float = 5e-3,
        mlp_lr: float = 1e-3,
        lr_final_factor: float = 0.1,
        eval_embedding_steps: int = 50,
        eval_embedding_lr: float = 0.05,
        seed: int = 0,
    ):
        super().__init__(backend, near, far)
        for name, v in (("feature_dim", feature_dim), ("embedding_dim", embedding_dim), ("hidden_width", hidden_width)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if hidden_layers < 1 or warm_up < 0 or eval_embedding_steps < 0 or not 0 < lr_final_factor <= 1:
            raise ValueError("hidden_layers must be >= 1, warm_up and eval_embedding_steps >= 0, lr_final_factor in (0,1]")
        self.feature_dim, self.embedding_dim = feature_dim, embedding_dim
        self.hidden_layers, self.hidden_width = hidden_layers, hidden_width
        self.warm_up = warm_up
        self.features_lr, self.embedding_lr, self.mlp_lr, self.lr_final_factor = features_lr, embedding_lr, mlp_lr, lr_final_factor
        self.eval_embedding_steps, self.eval_embedding_lr = eval_embedding_steps, eval_embedding_lr
        self.seed = seed

        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        width_in = embedding_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width_in, hidden_width), nn.ReLU()]
            width_in = hidden_width
        # The output layer gives M_g, row-major (6, feature_dim + 4).
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_width, 6 * (feature_dim + 4)))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                _init_linear(layer, g)
        with torch.no_grad():
            self.head.weight.zero_()  # M_g = 0: training starts as plain 3DGS
            self.head.bias.zero_()
        self.embeddings = nn.Parameter(torch.zeros(0, embedding_dim))
        self._groups: list[str] = []
        self._trained: list[bool] = []
        self._scene_groups: Optional[list[str]] = None
        self._stage = "fit"
        self._step = 0  # the training step begin_step saw (for the warm-up)

    @property
    def head(self) -> nn.Linear:
        """The MLP's output layer (zero at the start)."""
        return self.mlp[-1]

    # ---------------------------------------------------------------- groups
    @property
    def group_names(self) -> list[str]:
        return list(self._groups)

    @property
    def trained_groups(self) -> list[str]:
        """Groups that had training images (those render with their own embedding in evaluation)."""
        return [g for g, t in zip(self._groups, self._trained) if t]

    def _set_groups(self, names: list[str], trained: list[bool]) -> None:
        self._groups, self._trained = list(names), list(trained)
        n = len(names)
        if self.embeddings.shape[0] != n:
            with torch.no_grad():
                self.embeddings.data = self.embeddings.new_zeros(n, self.embedding_dim)
                self.embeddings.grad = None

    def group_index(self, name: str) -> int:
        """Index of group `name` in group_names (what cameras.appearance_id holds); a clear error otherwise."""
        if name not in self._groups:
            shown = ", ".join(self._groups[:20]) + (f" and {len(self._groups) - 20} more" if len(self._groups) > 20 else "")
            raise ValueError(f"unknown appearance group {name!r}; the model has: {shown or 'none'}")
        return self._groups.index(name)

    def get_extra_state(self) -> Tensor:
        # Group names travel in the state dict (key "renderer._extra_state"), so a checkpoint alone can
        # render by name. Encoded as a uint8 tensor of JSON: every state-dict value stays a tensor for
        # the tools that iterate checkpoints.
        text = json.dumps({"groups": list(self._groups), "trained": list(self._trained)})
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        if isinstance(state, Tensor):
            state = json.loads(bytes(state.cpu().tolist()).decode("utf-8"))
        names, trained = [str(n) for n in state["groups"]], [bool(t) for t in state["trained"]]
        if self._scene_groups is not None and self._stage == "fit" and names != self._scene_groups:
            raise ValueError(
                f"the checkpoint's appearance groups ({len(names)}: {', '.join(names[:5])}...) are not the scene's "
                f"({len(self._scene_groups)}: {', '.join(self._scene_groups[:5])}...); resume with the group file it "
                "was trained with (--data.params.colmap.appearance_groups / .blender.)")
        self._set_groups(names, trained)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "embeddings"
        if key in state_dict and state_dict[key].shape != self.embeddings.shape:
            with torch.no_grad():  # adopt the checkpoint's number of groups (values follow)
                self.embeddings.data = self.embeddings.new_zeros(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- hooks the module calls
    def _init_features(self, n: int) -> Tensor:
        # Small random features from a fixed seed: identical on every process, and distinct per Gaussian.
        g = torch.Generator().manual_seed(self.seed + 1)
        return 0.1 * torch.randn(n, self.feature_dim, generator=g)

    def setup(self, gaussians, scene=None, stage: str = "fit") -> None:
        gaussians.add_parameter(FEATURES, (self.feature_dim,), self._init_features)
        self._stage = stage
        if scene is None:
            return
        names = list(scene.appearance_group_names)
        trained = [False] * len(names)
        for i in scene.train_ids:
            trained[int(scene.cameras.appearance_id[i])] = True
        self._scene_groups = names
        self._set_groups(names, trained)

    def optimizer_groups(self) -> tuple[dict[str, float], list[dict]]:
        mlp = [p for name, p in self.named_parameters() if name != "embeddings"]
        return {FEATURES: self.features_lr}, [
            {"params": [self.embeddings], "lr": self.embedding_lr, "name": "appearance_embeddings", "eps": 1e-15},
            {"params": mlp, "lr": self.mlp_lr, "name": "appearance_mlp", "eps": 1e-15},
        ]

    def begin_step(self, step: int, optimizer, max_steps: int) -> None:
        from .. import ddp

        self._step = step
        end = max(int(max_steps), self.warm_up + 1)
        for name, lr in ((FEATURES, self.features_lr), ("appearance_embeddings", self.embedding_lr), ("appearance_mlp", self.mlp_lr)):
            group = param_group(optimizer, name)
            group["lr"] = exp_lr(max(step - self.warm_up, 0), lr, lr * self.lr_final_factor, end - self.warm_up) * ddp.lr_factor(group)

    # ---------------------------------------------------------------- rendering
    def forward(self, gaussians, cameras, background: Tensor, sh_degree: int | None = None,
                with_depth: bool = True) -> RenderOutput:
        """cameras.appearance_id indexes group_names. During the warm-up of training: plain 3DGS."""
        if self.training and self._step < self.warm_up:
            return super().forward(gaussians, cameras, background, sh_degree, with_depth=with_depth)
        ids = cameras.appearance_id.to(self.embeddings.device)
        n = len(self._groups)
        if n == 0 or bool(((ids < 0) | (ids >= n)).any()):
            raise ValueError(f"camera appearance_id {ids.tolist()} does not index the {n} appearance groups of the model "
                             f"({', '.join(self._groups[:10])}); pick a group with group_index(name)")
        return self._render(gaussians, cameras, background, self.embeddings[ids], sh_degree, with_depth)

    def _matrices(self, embeddings: Tensor) -> Tensor:
        """(C,E) group embeddings -> (C, 6, feature_dim + 4) per-camera matrices M_g."""
        return self.mlp(embeddings).view(-1, 6, self.feature_dim + 4)

    @staticmethod
    def _base(gaussians) -> Tensor:
        """(N,3) the view-independent SH colour, gradient stopped: an input of the transform."""
        return (SH_C0 * gaussians.sh0[:, 0, :] + 0.5).detach()

    def _base_colors(self, gaussians, cameras, sh_degree) -> Tensor:
        viewmats = cameras.viewmats().to(gaussians.means.dtype)
        return shade(gaussians.get_means(), gaussians.sh_pair(), self._degree(gaussians, sh_degree), viewmats, self.backend)

    def _render(self, gaussians, cameras, background, embeddings: Tensor, sh_degree=None,
                with_depth: bool = True) -> RenderOutput:
        colors = self._base_colors(gaussians, cameras, sh_degree)
        colors = affine_colors(colors, getattr(gaussians, FEATURES), self._base(gaussians), self._matrices(embeddings))
        return self._rasterize(gaussians, cameras, background, colors, None, with_depth=with_depth)

    # ---------------------------------------------------------------- evaluation
    def _table_id(self, cameras) -> int:
        """The group table index of a one-camera batch, -1 when the group is not in the table."""
        i = int(cameras.appearance_id[0])
        if self._scene_groups is None or self._scene_groups == self._groups:
            return i if 0 <= i < len(self._groups) else -1
        name = self._scene_groups[i] if 0 <= i < len(self._scene_groups) else None
        return self._groups.index(name) if name in self._groups else -1

    def render_for_evaluation(self, gaussians, cameras, background, image, mask):
        if len(cameras) != 1:
            raise ValueError("render_for_evaluation takes one camera at a time")
        gid = self._table_id(cameras)
        if gid >= 0 and self._trained[gid]:
            return self._render(gaussians, cameras, background, self.embeddings[gid][None]), mask, PROTOCOL_OWN_GROUP
        width, height = self._size(cameras)
        half = width // 2
        cols = torch.arange(width, device=image.device)
        right = (cols >= half)[None, :].expand(height, width)
        score = right if mask is None else (right & mask.bool())
        embedding = self.fit_embedding(gaussians, cameras, background, image, mask, half)
        return self._render(gaussians, cameras, background, embedding[None]), score, PROTOCOL_NERFW

    def fit_embedding(self, gaussians, cameras, background, image: Tensor, mask: Optional[Tensor], width: int) -> Tensor:
        """An embedding for a view whose group was not trained: Adam on the L1 error of the view's left
        `width` columns (rendered by a camera cropped to them), everything else frozen. Starts from the
        mean of the trained groups' embeddings. Runs under Lightning's inference mode too."""
        from ..metrics import l1

        trained = [i for i, t in enumerate(self._trained) if t]
        with torch.inference_mode(False), torch.enable_grad():
            start = self.embeddings.detach()[trained].mean(0) if trained else self.embeddings.new_zeros(self.embedding_dim)
            embedding = start.clone().requires_grad_(True)
            if self.eval_embedding_steps == 0 or width < 1:
                return embedding.detach()
            left = dataclasses.replace(cameras, width=torch.full_like(cameras.width, width))  # same intrinsics: a crop
            gt = image[:, :width].clone()
            keep = None if mask is None else mask[:, :width].clone()
            bg = background.clone()
            with torch.no_grad():
                colors = self._base_colors(gaussians, left, None)
                features, base = getattr(gaussians, FEATURES).detach(), self._base(gaussians)
            opt = torch.optim.Adam([embedding], lr=self.eval_embedding_lr)
            for _ in range(self.eval_embedding_steps):
                transformed = affine_colors(colors, features, base, self._matrices(embedding[None]))
                out = self._rasterize(gaussians, left, bg, transformed, None, detach_geometry=True)
                loss = l1(out.colors[0], gt, keep)
                # autograd.grad, not backward: the MLP's weights must not collect .grad here (the next
                # training step would add it to its own).
                (embedding.grad,) = torch.autograd.grad(loss, [embedding])
                opt.step()
        return embedding.detach()

    # ---------------------------------------------------------------- exports
    @torch.no_grad()
    def export_splats(self, gaussians, appearance_group: Optional[str] = None):
        """The Gaussians as Splats with `appearance_group`'s look (default: the first group) baked into the
        SH (see bake_group)."""
        splats = gaussians.to_splats()
        if not self._groups:
            if appearance_group is not None:
                raise ValueError(f"appearance group {appearance_group!r} was asked for, but the model has no groups yet")
            return splats
        return self.bake_group(splats, getattr(gaussians, FEATURES).detach(), appearance_group)

    @torch.no_grad()
    def bake_group(self, splats, features: Tensor, appearance_group: Optional[str] = None):
        """A copy of `splats` (pre-activation, its Gaussians' appearance `features` (N,F) in the same order)
        whose plain SH colours are this renderer's colours for `appearance_group` (default: the first
        group): every SH band scaled by 1 + a, the offset b added to the DC term. Exact wherever
        SH + 0.5 >= 0 (where plain 3DGS does not clamp); the transform does not depend on the view."""
        gid = self.group_index(appearance_group if appearance_group is not None else self._groups[0])
        sh0 = splats.sh0.to(features)
        base = SH_C0 * sh0[:, 0, :] + 0.5
        matrices = self._matrices(self.embeddings[gid][None].to(features))
        ab = affine_coefficients(features, base, matrices)[0].to(splats.sh0)
        scale, offset = 1.0 + ab[:, :3], ab[:, 3:]
        return dataclasses.replace(
            splats,
            sh0=((scale * (SH_C0 * splats.sh0[:, 0, :] + 0.5) + offset - 0.5) / SH_C0)[:, None, :],
            shN=splats.shN * scale[:, None, :],
        )

    def extra_repr(self) -> str:
        return (f"groups={len(self._groups)}, feature_dim={self.feature_dim}, embedding_dim={self.embedding_dim}, "
                f"mlp={self.hidden_layers}x{self.hidden_width}, warm_up={self.warm_up}")
