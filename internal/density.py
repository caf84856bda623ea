"""Adaptive density control of 3DGS: clone, split, prune and opacity reset on the 3DGS schedule.

The module calls, every training step:

    controller.update_stats(out.means2d.grad, out.radii, width, height)   # after backward
    info = controller.step(global_step, gaussians, optimizer, extent, generator, white_background)
    optimizer.step()

Step indexing. 3DGS counts iterations from 1 and densifies inside iteration i after its backward
and before its optimizer step, when i has taken i-1 optimizer steps. Our `step` is the number of
optimizer steps already taken (Lightning's 0-based global_step), so iteration = step + 1 and every
3DGS condition is kept exactly on that iteration:
    statistics and all density control only while  iteration < densify_until
    densify + prune when   iteration > densify_from and iteration % densify_every == 0   (steps 599, 699, ...)
    opacity reset when     iteration % opacity_reset_every == 0                           (steps 2999, 5999, ...)
                           or iteration == densify_from for a white background           (step 499)
    size-based pruning     once iteration > opacity_reset_every
As in 3DGS, opacity resets stop with densification (the last default one is iteration 12000).

Several processes: each process accumulates statistics over its own views; `reduce_fn` (an in-place
sum across processes) is applied to `stats()` right before a decision, and all random draws come
from the generator passed in, so identically seeded processes make identical decisions and keep
identical Gaussians.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import check
from .gaussians import GaussianModel, logit, resize_to_state_dict
from .optim import append_gaussians, keep_gaussians, reset_state_rows
from .rasterize.projection import quat_to_rotmat

STAT_NAMES = ("grad_accum", "count", "max_radii")


def split_samples(means: Tensor, quats: Tensor, scales: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Positions of `count` children per Gaussian, drawn from the Gaussian itself: mean + R diag(s) z.

    means (M,3), quats (M,4) any norm, scales (M,3) activated. Returns (count*M,3), block k holding
    the k-th child of every Gaussian (the order in which children are appended). z ~ N(0,I) is drawn
    on the generator's device, then moved, so the draws do not depend on where the model lives.
    """
    m = means.shape[0]
    z = torch.randn((count, m, 3), generator=generator, device=generator.device, dtype=means.dtype).to(means.device)
    offsets = torch.einsum("mij,kmj->kmi", quat_to_rotmat(quats), z * scales)
    return (means[None] + offsets).reshape(count * m, 3)


class DensityController(nn.Module):
    """3DGS adaptive density control (see the module docstring for the schedule).

    Args (defaults are 3DGS's):
        densify_from, densify_until, densify_every: the densification window and interval (iterations).
        grad_threshold: mean NDC-space gradient norm of means2d at which a Gaussian is densified.
        percent_dense: Gaussians with max scale <= percent_dense * extent are cloned, larger ones split.
        opacity_reset_every, reset_opacity_to: periodic opacity = min(opacity, reset_opacity_to).
        prune_opacity: Gaussians below this opacity are removed at every densification.
        max_screen_size: after the first reset, also remove Gaussians whose screen radius exceeded this
            many pixels during the window. 0 (default) disables it. 3DGS passes 20, but its check never
            fires (its radii are zeroed just before the test; graphdeco-inria/gaussian-splatting issues
            #544, #643: the published numbers were obtained without it), so 0 reproduces 3DGS.
        max_world_size: after the first reset, remove Gaussians larger than this fraction of the extent.
        split_count, split_scale_divisor: children per split, and their scale divisor (3DGS: 2, 0.8*2).
        max_gaussians: 0 = no cap; otherwise densification never grows past it, preferring the
            candidates with the largest gradient (a CPU memory/time budget).
        reset_opacity_at_densify_from_for_white_background: 3DGS's extra reset at densify_from when
            the background is white.
    """

    def __init__(
        self,
        densify_from: int = 500,
        densify_until: int = 15000,
        densify_every: int = 100,
        grad_threshold: float = 2e-4,
        percent_dense: float = 0.01,
        opacity_reset_every: int = 3000,
        reset_opacity_to: float = 0.01,
        prune_opacity: float = 0.005,
        max_screen_size: int = 0,
        max_world_size: float = 0.1,
        split_count: int = 2,
        split_scale_divisor: float = 1.6,
        max_gaussians: int = 0,
        reset_opacity_at_densify_from_for_white_background: bool = True,
    ):
        super().__init__()
        opt = "--model.density.init_args."
        check(densify_every > 0, opt + "densify_every", f"must be > 0, got {densify_every}")
        for name, value in (("densify_from", densify_from), ("densify_until", densify_until),
                            ("opacity_reset_every", opacity_reset_every), ("max_gaussians", max_gaussians),
                            ("max_screen_size", max_screen_size)):
            check(value >= 0, opt + name, f"must be >= 0 (0 disables where that applies), got {value}")
        check(0.0 < reset_opacity_to < 1.0, opt + "reset_opacity_to", f"must be in (0,1), got {reset_opacity_to}")
        check(0.0 <= prune_opacity < 1.0, opt + "prune_opacity", f"must be in [0,1), got {prune_opacity}")
        check(grad_threshold > 0, opt + "grad_threshold", f"must be > 0, got {grad_threshold}")
        check(split_count >= 1, opt + "split_count", f"must be >= 1, got {split_count}")
        check(split_scale_divisor > 0, opt + "split_scale_divisor", f"must be > 0, got {split_scale_divisor}")
        self.densify_from = densify_from
        self.densify_until = densify_until
        self.densify_every = densify_every
        self.grad_threshold = grad_threshold
        self.percent_dense = percent_dense
        self.opacity_reset_every = opacity_reset_every
        self.reset_opacity_to = reset_opacity_to
        self.prune_opacity = prune_opacity
        self.max_screen_size = max_screen_size
        self.max_world_size = max_world_size
        self.split_count = split_count
        self.split_scale_divisor = split_scale_divisor
        self.max_gaussians = max_gaussians
        self.reset_opacity_at_densify_from_for_white_background = reset_opacity_at_densify_from_for_white_background
        # Per-Gaussian statistics of the current window, as buffers so that a resumed run continues
        # the window it was in. float32 throughout so one collective can sum them.
        self.register_buffer("grad_accum", torch.zeros(0))  # sum over visible views of |NDC grad of means2d|
        self.register_buffer("count", torch.zeros(0))  # number of views in which the Gaussian was visible
        self.register_buffer("max_radii", torch.zeros(0))  # largest screen radius seen, pixels
        # In-place sum across processes of a list of tensors (None: single process).
        self.reduce_fn: Callable[[list[Tensor]], None] | None = None

    # ---------------------------------------------------------------- statistics

    def regularization(self, model: GaussianModel) -> Tensor | None:
        """A loss term the strategy adds to the photometric loss (None: none; 3DGS has none)."""
        return None

    def wants_stats(self, step: int) -> bool:
        """Whether update_stats matters at this step (3DGS stops accumulating at densify_until)."""
        return step + 1 < self.densify_until

    def reset_stats(self, n: int | None = None) -> None:
        """Zero the statistics, sized for n Gaussians (default: their current size)."""
        n = self.grad_accum.shape[0] if n is None else n
        for name in STAT_NAMES:
            setattr(self, name, getattr(self, name).new_zeros(n))

    def _ensure_size(self, n: int) -> None:
        # Statistics belong to one set of Gaussians. When the model changed size behind the
        # controller's back (initialisation, loading a PLY), the old numbers mean nothing: restart.
        if self.grad_accum.shape[0] != n:
            self.reset_stats(n)

    @torch.no_grad()
    def update_stats(self, means2d_grad: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Accumulate one step's screen-space statistics.

        means2d_grad (C,N,2) in pixels (or (N,2)), radii (C,N) (or (N,)), 0 = not visible. 3DGS's
        threshold is defined on the gradient w.r.t. NDC coordinates, i.e. the pixel gradient times
        (W/2, H/2). Each camera in which a Gaussian is visible counts as one view, as 3DGS counts one
        view per iteration.
        """
        if means2d_grad.dim() == 2:
            means2d_grad, radii = means2d_grad[None], radii[None]
        c, n, _ = means2d_grad.shape
        self._ensure_size(n)
        dev = self.grad_accum.device
        to_ndc = means2d_grad.new_tensor([0.5 * width, 0.5 * height])
        norms = (means2d_grad.detach() * to_ndc).norm(dim=-1)
        visible = radii > 0
        self.grad_accum += torch.where(visible, norms, torch.zeros_like(norms)).sum(0).to(dev, torch.float32)
        self.count += visible.sum(0).to(dev, torch.float32)
        if c > 0:
            torch.maximum(self.max_radii, radii.max(0).values.to(dev, torch.float32), out=self.max_radii)

    def stats(self) -> list[Tensor]:
        """The statistics a decision uses, all in sum-reducible form: [grad_accum, count, screen_votes].

        grad_accum and count are the buffers themselves (a reduce_fn sums them in place). The screen
        radius is a maximum, which a sum cannot combine, so it is handed over as a vote: 1 where
        max_radii > max_screen_size. "Some process voted" is exactly "the max over processes exceeds
        the limit", so summed votes give every process the same pruning decision.
        """
        votes = (self.max_radii > self.max_screen_size).to(torch.float32)
        return [self.grad_accum, self.count, votes]

    # ---------------------------------------------------------------- the schedule

    @torch.no_grad()
    def step(
        self,
        step: int,
        model: GaussianModel,
        optimizer,
        extent: float,
        generator: torch.Generator,
        white_background: bool = False,
    ) -> dict:
        """Run whatever the schedule asks at this step (after backward, before optimizer.step).

        step: optimizer steps taken so far (0-based global step); extent: the scene radius (3DGS's
        cameras_extent). Returns {"densified", "cloned", "split", "pruned", "reset", "num_gaussians"}.
        """
        it = step + 1  # the 3DGS iteration (module docstring)
        info = {"densified": False, "cloned": 0, "split": 0, "pruned": 0, "reset": False}
        if it < self.densify_until:
            self._ensure_size(model.num_gaussians)
            if it > self.densify_from and it % self.densify_every == 0:
                prune_big = self.opacity_reset_every > 0 and it > self.opacity_reset_every
                info.update(self.densify_and_prune(model, optimizer, extent, generator, prune_big))
            white_reset = white_background and self.reset_opacity_at_densify_from_for_white_background and it == self.densify_from
            if (self.opacity_reset_every > 0 and it % self.opacity_reset_every == 0) or white_reset:
                self.reset_opacity(model, optimizer)
                info["reset"] = True
        info["num_gaussians"] = model.num_gaussians
        return info

    @torch.no_grad()
    def reset_opacity(self, model: GaussianModel, optimizer) -> None:
        """opacity = min(opacity, reset_opacity_to), done on logits (sigmoid is monotone, so exact).

        As 3DGS, the Adam moments of every opacity are zeroed, clamped or not.
        """
        cap = logit(self.reset_opacity_to)
        reset_state_rows(model, optimizer, "opacities", lambda t: t.clamp_max(cap))

    @torch.no_grad()
    def densify_and_prune(
        self, model: GaussianModel, optimizer, extent: float, generator: torch.Generator, prune_big: bool = False
    ) -> dict:
        """Clone small and split large high-gradient Gaussians, prune, then restart the statistics.

        prune_big: also prune by world size (and by screen size when max_screen_size > 0).
        """
        n = model.num_gaussians
        self._ensure_size(n)
        stats = self.stats()
        if self.reduce_fn is not None:
            self.reduce_fn(stats)  # sum over processes before anything is decided
        grad_accum, count, votes = stats
        dev = model.means.device
        avg_grad = torch.where(count > 0, grad_accum / count.clamp_min(1.0), torch.zeros_like(grad_accum)).to(dev)
        big_on_screen = (votes > 0).to(dev) if self.max_screen_size > 0 else torch.zeros(n, dtype=torch.bool, device=dev)

        # Candidates are judged on the Gaussians as they were during the window, before any change.
        candidate = avg_grad >= self.grad_threshold
        small = model.get_scales().max(dim=1).values <= self.percent_dense * extent
        if self.max_gaussians > 0:
            candidate = self._cap_candidates(candidate, small, avg_grad, n)
        clone_idx = torch.nonzero(candidate & small).squeeze(1)
        split_idx = torch.nonzero(candidate & ~small).squeeze(1)

        # Clones: exact copies (they separate through their own gradients). Children of a split:
        # positions sampled from the parent, scales shrunk by the divisor, everything else copied.
        k = self.split_count
        new = {}
        for name in model.param_names:  # extra per-Gaussian parameters (a renderer's) are copied like colours
            value = getattr(model, name).detach()
            if name == "means":
                children = split_samples(value[split_idx], model.quats[split_idx], model.get_scales()[split_idx], k, generator)
            else:
                children = value[split_idx].repeat(k, *([1] * (value.dim() - 1)))
                if name == "scales":
                    children = children - math.log(self.split_scale_divisor)
            new[name] = torch.cat([value[clone_idx], children])
        append_gaussians(model, optimizer, new)

        # Rows now: n originals, then the clones, then the children. Remove the split parents, and
        # prune over everything (children included, as 3DGS prunes after growing).
        total = model.num_gaussians
        parents = torch.zeros(total, dtype=torch.bool, device=dev)
        parents[split_idx] = True
        prune = model.get_opacities() < self.prune_opacity
        if prune_big:
            if self.max_world_size > 0:
                prune |= model.get_scales().max(dim=1).values > self.max_world_size * extent
            # Screen radii were measured for the originals only; a clone is an exact copy and
            # inherits the measurement, split children are new shapes that were never seen.
            seen_big = torch.cat([big_on_screen, big_on_screen[clone_idx], big_on_screen.new_zeros(total - n - len(clone_idx))])
            prune |= seen_big
        keep_gaussians(model, optimizer, ~(parents | prune))
        self.reset_stats(model.num_gaussians)
        return {
            "densified": True,
            "cloned": int(len(clone_idx)),
            "split": int(len(split_idx)),
            "pruned": int((prune & ~parents).sum()),
        }

    def _cap_candidates(self, candidate: Tensor, small: Tensor, avg_grad: Tensor, n: int) -> Tensor:
        """Keep the highest-gradient candidates whose growth fits under max_gaussians.

        A clone adds one Gaussian, a split adds split_count - 1 (the parent goes). Taking candidates
        in descending gradient order while the running growth fits keeps the decision deterministic
        (stable sort) and identical on every process.
        """
        budget = self.max_gaussians - n
        idx = torch.nonzero(candidate).squeeze(1)
        if budget <= 0:
            return torch.zeros_like(candidate)
        order = torch.sort(avg_grad[idx], descending=True, stable=True).indices
        idx = idx[order]
        cost = torch.where(small[idx], 1, self.split_count - 1)
        capped = torch.zeros_like(candidate)
        capped[idx[torch.cumsum(cost, 0) <= budget]] = True
        return capped

    # ---------------------------------------------------------------- checkpoints

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The statistics have one row per Gaussian: adopt the checkpoint's N, as GaussianModel does.
        resize_to_state_dict(self, state_dict, prefix, STAT_NAMES)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (
            f"densify {self.densify_from}..{self.densify_until} every {self.densify_every}, "
            f"grad_threshold={self.grad_threshold}, max_gaussians={self.max_gaussians}"
        )


def relocation_targets(opacities: Tensor, scales: Tensor, copies: Tensor, binoms: Tensor, min_opacity: float):
    """Opacity and scale for each of `copies` (N,) Gaussians that together replace one Gaussian of
    opacity `opacities` (N,) and scales `scales` (N,3) (activated), as 3DGS-MCMC (Kheradmand et al. 2024)
    derives them: o' = 1 - (1 - o)^(1/n), so n copies stacked at one point let through what the original
    did, and the scales shrink by o / sum_{i=1..n} sum_{k=0..i-1} C(i-1,k) (-1)^k o'^(k+1) / sqrt(k+1),
    so the copies' summed opacity profile has the original's peak. The inner sum over i is C(n, k+1)
    (hockey stick), evaluated in float64 (the alternating binomial sum cancels). binoms: (M+1,M+1) table,
    copies <= M.
    """
    o = opacities.double().clamp(min_opacity, 1.0 - 1e-7)
    n = copies.double()
    o_new = (1.0 - torch.pow(1.0 - o, 1.0 / n)).clamp(min_opacity, 1.0 - 1e-7)
    k = torch.arange(binoms.shape[0] - 1, dtype=torch.float64)  # terms k = 0..M-1
    coef = binoms[copies.long()][:, 1:]  # C(n, k+1)
    terms = coef * ((-1.0) ** k) * o_new[:, None] ** (k + 1) / torch.sqrt(k + 1)
    terms = torch.where(k[None] < n[:, None], terms, torch.zeros_like(terms))
    denom = terms.sum(1)
    ratio = (o / denom).clamp_min(1e-12)
    return o_new.to(opacities.dtype), (scales.double() * ratio[:, None]).to(scales.dtype)


class MCMCDensityController(DensityController):
    """3DGS as Markov chain Monte Carlo (Kheradmand et al., "3D Gaussian Splatting as Markov Chain Monte
    Carlo", 2024): a fixed budget instead of clone/split/prune. Select it with
    `--model.density internal.density.MCMCDensityController` (configs/cpu_mcmc.yaml for the CPU preset).

    Every `refine_every` iterations in (refine_from, refine_until): the dead Gaussians (opacity <=
    min_opacity) are moved onto live ones drawn with probability proportional to opacity, and
    min(cap_max - N, grow_rate * N) new ones are added the same way; a drawn Gaussian and its copies
    share its opacity and footprint (relocation_targets), and all of them restart their Adam moments.
    Every iteration, means take a step of noise: lr_means * noise_lr * sigmoid(100 (0.005 - o)) * Sigma z
    (Sigma the Gaussian's covariance, z ~ N(0, I)), which explores where Gaussians are nearly transparent
    and leaves opaque ones alone (the update is independent of the Adam step, so adding it before the
    optimizer step is the same as after). The loss gains opacity_reg * mean(opacity) + scale_reg *
    mean(scale). Defaults are the paper's.

    All draws come from the training generator, so processes that share it stay identical (DDP).
    """

    def __init__(
        self,
        cap_max: int = 1_000_000,
        refine_from: int = 500,
        refine_until: int = 25_000,
        refine_every: int = 100,
        min_opacity: float = 0.005,
        grow_rate: float = 0.05,
        noise_lr: float = 5e5,
        opacity_reg: float = 0.01,
        scale_reg: float = 0.01,
        max_copies: int = 51,
    ):
        super().__init__(densify_from=refine_from, densify_until=refine_until, densify_every=refine_every,
                         opacity_reset_every=0, prune_opacity=min_opacity)
        opt = "--model.density.init_args."
        check(cap_max > 0, opt + "cap_max", f"must be > 0, got {cap_max}")
        check(0.0 <= grow_rate <= 1.0, opt + "grow_rate", f"must be in [0,1], got {grow_rate}")
        check(0.0 < min_opacity < 1.0, opt + "min_opacity", f"must be in (0,1), got {min_opacity}")
        for name, value in (("noise_lr", noise_lr), ("opacity_reg", opacity_reg), ("scale_reg", scale_reg)):
            check(value >= 0.0, opt + name, f"must be >= 0, got {value}")
        check(2 <= max_copies <= 200, opt + "max_copies", f"must be in 2..200, got {max_copies}")
        self.cap_max = cap_max
        self.refine_from = refine_from
        self.refine_until = refine_until
        self.refine_every = refine_every
        self.min_opacity = min_opacity
        self.grow_rate = grow_rate
        self.noise_lr = noise_lr
        self.opacity_reg = opacity_reg
        self.scale_reg = scale_reg
        self.max_copies = max_copies
        b = torch.zeros(max_copies + 1, max_copies + 1, dtype=torch.float64)
        for n in range(max_copies + 1):
            for k in range(n + 1):
                b[n, k] = math.comb(n, k)
        self._binoms = b

    def wants_stats(self, step: int) -> bool:
        return False  # decisions use opacities only

    def update_stats(self, means2d_grad: Tensor, radii: Tensor, width: int, height: int) -> None:
        pass

    def regularization(self, model: GaussianModel) -> Tensor | None:
        reg = None
        if self.opacity_reg > 0:
            reg = self.opacity_reg * model.get_opacities().mean()
        if self.scale_reg > 0:
            term = self.scale_reg * model.get_scales().mean()
            reg = term if reg is None else reg + term
        return reg

    @torch.no_grad()
    def step(self, step, model, optimizer, extent, generator, white_background=False) -> dict:
        it = step + 1
        info = {"densified": False, "relocated": 0, "added": 0}
        if it < self.refine_until and it > self.refine_from and it % self.refine_every == 0:
            info["relocated"] = self.relocate(model, optimizer, generator)
            info["added"] = self.grow(model, optimizer, generator)
            info["densified"] = True
        self.add_noise(model, optimizer, generator)
        info["num_gaussians"] = model.num_gaussians
        return info

    def _draw(self, weights: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """count indices drawn with replacement, with probability proportional to weights (float64, on
        the generator's device, so every process draws the same)."""
        w = weights.detach().double().to(generator.device)
        return torch.multinomial(w, count, replacement=True, generator=generator).to(weights.device)

    def _share(self, model, optimizer, targets: Tensor) -> None:
        """Give every drawn Gaussian (the unique `targets`, with how many times each was drawn) the opacity
        and scales it shares with its coming copies, and a fresh Adam start for both."""
        uniq, counts = torch.unique(targets, return_counts=True)
        copies = (counts + 1).clamp_max(self.max_copies)
        o_new, s_new = relocation_targets(model.get_opacities()[uniq], model.get_scales()[uniq], copies,
                                          self._binoms, self.min_opacity)
        logits, log_scales = torch.logit(o_new.double()).to(o_new.dtype), torch.log(s_new)
        rows = torch.zeros(model.num_gaussians, dtype=torch.bool, device=uniq.device)
        rows[uniq] = True
        full_o, full_s = model.opacities.detach().clone(), model.scales.detach().clone()
        full_o[uniq], full_s[uniq] = logits.to(full_o), log_scales.to(full_s)
        reset_state_rows(model, optimizer, "opacities", lambda t: full_o, rows)
        reset_state_rows(model, optimizer, "scales", lambda t: full_s, rows)

    def relocate(self, model, optimizer, generator) -> int:
        """Move the dead Gaussians onto live ones; returns how many moved."""
        opac = model.get_opacities()
        dead = opac <= self.min_opacity
        n_dead, n_alive = int(dead.sum()), int((~dead).sum())
        if n_dead == 0 or n_alive == 0:
            return 0
        alive_idx = torch.nonzero(~dead).squeeze(1)
        targets = alive_idx[self._draw(opac[alive_idx], n_dead, generator)]
        self._share(model, optimizer, targets)  # the drawn ones first: the dead copy their new values
        src = torch.arange(model.num_gaussians, device=targets.device)
        src[torch.nonzero(dead).squeeze(1)] = targets
        for name in model.param_names:
            reset_state_rows(model, optimizer, name, lambda t: t[src.to(t.device)], dead)
        return n_dead

    def grow(self, model, optimizer, generator) -> int:
        """Add min(cap_max - N, grow_rate N) copies of Gaussians drawn by opacity; returns how many."""
        n = model.num_gaussians
        count = min(self.cap_max - n, int(self.grow_rate * n))
        if count <= 0:
            return 0
        targets = self._draw(model.get_opacities(), count, generator)
        self._share(model, optimizer, targets)
        append_gaussians(model, optimizer, {name: getattr(model, name).detach()[targets] for name in model.param_names})
        return count

    def add_noise(self, model, optimizer, generator) -> None:
        if self.noise_lr <= 0:
            return
        lr = next((g["lr"] for g in optimizer.param_groups if g.get("name") == "means"), None)
        if lr is None:
            return
        opac = model.get_opacities()
        gate = torch.sigmoid(100.0 * (self.min_opacity - opac))
        rot = quat_to_rotmat(model.quats.detach())
        s2 = model.get_scales() ** 2
        cov = rot @ (s2[:, :, None] * rot.transpose(1, 2))
        z = torch.randn(model.num_gaussians, 3, generator=generator, device=generator.device).to(model.means)
        noise = torch.einsum("nij,nj->ni", cov, z) * (gate * (lr * self.noise_lr))[:, None]
        model.means.data.add_(noise.to(model.means.dtype))

    def extra_repr(self) -> str:
        return f"MCMC cap_max={self.cap_max}, refine {self.refine_from}..{self.refine_until} every {self.refine_every}"


__all__ = ["DensityController", "MCMCDensityController", "relocation_targets", "split_samples"]
