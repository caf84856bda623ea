"""GaussianSplatting: the LightningModule. Reads top to bottom as one training step of 3DGS:

render -> masked (1-λ)·L1 + λ·(1-SSIM) (+ a guidance loss on novel views, when configured) -> backward
-> densification statistics and schedule (clone / split / prune / opacity reset, optimizer state resized
with the parameters) -> Adam step -> SH degree up every `sh_degree_interval` steps.

Optimisation is manual (`automatic_optimization = False`) because densification must run between
the backward pass and the optimizer step, and it replaces parameters and their Adam state.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import lightning
import numpy as np
import torch
from jsonargparse import lazy_instance
from PIL import Image

from . import ddp, metrics
from .density import DensityController
from .errors import check
from .gaussians import GaussianModel
from .guidance import Guidance
from .loss import photometric_loss
from .optim import create_optimizer, exp_lr
from .renderers import VanillaRenderer


def block_mean(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(H,W,C) -> (H//f, W//f, C): the mean of each f x f block of the top-left H//f*f x W//f*f pixels
    (the crop and pixel edges Cameras.scaled assumes)."""
    h, w, c = image.shape
    h, w = h // factor, w // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, c).mean(dim=(1, 3))


def _block_all(mask: Optional[torch.Tensor], factor: int) -> Optional[torch.Tensor]:
    """A down-scaled pixel is used only where every pixel of its block was."""
    if mask is None:
        return None
    h, w = mask.shape
    h, w = h // factor, w // factor
    return mask[: h * factor, : w * factor].reshape(h, factor, w, factor).all(dim=3).all(dim=1)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops and the last good checkpoint stays as it was."""


@dataclass
class OptimizationParams:
    """3DGS learning rates (position ones are multiplied by the scene extent) and loss weights."""

    means_lr_init: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    means_lr_max_steps: int = 30_000
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    opacities_lr: float = 0.05
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    ssim_weight: float = 0.2
    """λ in (1-λ)·L1 + λ·(1-SSIM)."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps, up to `sh_degree`."""
    num_downscales: int = 0
    """Train on images down-scaled by 2^k early on (splatfacto's resolution schedule): steps
    [0, resolution_schedule) at 1/2^num_downscales of the size, the next `resolution_schedule` steps at
    twice that, ..., full size from num_downscales * resolution_schedule on. 0 = always full size.
    Validation, test and the densification thresholds stay in full-size units."""
    resolution_schedule: int = 3000
    """Steps per resolution level of `num_downscales`."""
    downscale_random_init_only: bool = False
    """Apply the resolution schedule only to a start from random points (Blender scenes); a start from
    SfM points trains at full size from step 0. The early steps of a random start are the costliest
    (100k Gaussians spread over the whole cube), while an SfM start loses more to early half-size steps
    (BENCHMARKS.md, issue 15)."""

    def __post_init__(self):
        opt = "--model.optimization."
        for name in ("means_lr_init", "means_lr_final", "sh0_lr", "shN_lr", "opacities_lr", "scales_lr", "quats_lr"):
            value = getattr(self, name)
            check(value >= 0 and value == value and value != float("inf"), opt + name, f"must be a finite rate >= 0, got {value}")
        check(self.means_lr_max_steps > 0, opt + "means_lr_max_steps", f"must be > 0, got {self.means_lr_max_steps}")
        check(0.0 <= self.ssim_weight <= 1.0, opt + "ssim_weight", f"must be in [0,1], got {self.ssim_weight}")
        check(self.sh_degree_interval > 0, opt + "sh_degree_interval", f"must be > 0, got {self.sh_degree_interval}")
        check(0 <= self.num_downscales <= 4, opt + "num_downscales", f"must be in 0..4, got {self.num_downscales}")
        check(self.resolution_schedule > 0, opt + "resolution_schedule", f"must be > 0, got {self.resolution_schedule}")

    def downscale_factor(self, step: int, random_init: bool = True) -> int:
        """The integer factor the training images are down-scaled by at `step` (1 = full size);
        `random_init`: whether the Gaussians started from random points."""
        if self.downscale_random_init_only and not random_init:
            return 1
        return 2 ** max(self.num_downscales - step // self.resolution_schedule, 0)


class GaussianSplatting(lightning.LightningModule):
    """3D Gaussian Splatting.

    Args:
        sh_degree: maximum SH degree (0..3).
        renderer: how Gaussians become images (rasterizer backend inside).
        density: densification schedule and thresholds.
        optimization: learning rates and loss weights.
        background: "auto" (white for Blender scenes configured white, else black), "black", "white",
            or "random" (a new colour every training step; validation uses the configured one).
        init_opacity: opacity of the initial Gaussians.
        compute_lpips: compute LPIPS in validation/test when its weights can be had; otherwise it is
            reported as not computed.
        save_renders: save every validation/test render (and its ground truth) as PNG.
        guidance: an extra loss on views the photos do not cover, e.g. `SDSGuidance` (internal/guidance/);
            called once per training step, it renders its own views through `renderer`. Checkpoints keep
            its configuration, never its model.
    """

    def __init__(
        self,
        sh_degree: int = 3,
        renderer: VanillaRenderer = lazy_instance(VanillaRenderer),
        density: DensityController = lazy_instance(DensityController),
        optimization: OptimizationParams = OptimizationParams(),
        background: Literal["auto", "black", "white", "random"] = "auto",
        init_opacity: float = 0.1,
        compute_lpips: bool = False,
        save_renders: bool = True,
        guidance: Optional[Guidance] = None,
    ):
        super().__init__()
        check(0 <= sh_degree <= 3, "--model.sh_degree",
              f"must be 0..3 (what the PLY layout and the rasterizer support), got {sh_degree}")
        check(0.0 < init_opacity < 1.0, "--model.init_opacity", f"must be in (0,1), got {init_opacity}")
        self.save_hyperparameters(ignore=["renderer", "density", "guidance"])
        self.automatic_optimization = False
        self.gaussians = GaussianModel(sh_degree)
        self.renderer = renderer
        self.density = density
        self.guidance = guidance  # not an nn.Module: nothing of it (a diffusion model) enters state_dict
        self.opt = optimization
        self.background_mode = background
        self.init_opacity = init_opacity
        self.compute_lpips = compute_lpips
        self.save_renders = save_renders
        self.register_buffer("extent", torch.tensor(1.0))
        self.register_buffer("scene_background", torch.zeros(3))
        # One seeded generator for every random draw of training (split samples, random backgrounds):
        # identical on every process, and saved in checkpoints so a resumed run continues the same stream.
        self.generator = torch.Generator()
        self.generator.manual_seed(0)
        self._eval_rows: list[dict] = []
        self._lpips: Optional[metrics.LPIPS] = None
        self._random_init = False  # the scene's initial points are random (set from the scene in setup)

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        scene = dm.scene if dm is not None else None
        if scene is not None:
            self._random_init = bool(scene.random_points)
            self.extent.fill_(float(scene.extent))
            bg = scene.background if self.background_mode == "auto" else self._named_background()
            self.scene_background.copy_(torch.as_tensor(bg, dtype=torch.float32))
            if self.gaussians.num_gaussians == 0 and stage == "fit":
                # Fresh run: Gaussians from the scene's points. (On resume Lightning loads the checkpoint
                # after this, and the model resizes itself to the checkpoint's Gaussian count.)
                rgb = torch.as_tensor(scene.points_rgb, dtype=torch.float32) / 255.0
                self.gaussians.init_from_points(torch.as_tensor(scene.points_xyz, dtype=torch.float32), rgb, self.init_opacity)
        # The renderer's own state: per-Gaussian parameters it adds, tables sized from the scene.
        self.renderer.setup(self.gaussians, scene, stage)
        if stage == "fit":
            # Seeded from seed_everything's seed; a resumed run then overwrites it with the saved state
            # (Lightning restores checkpoints after setup).
            self.generator.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def _named_background(self):
        return {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0), "random": (0.0, 0.0, 0.0)}[self.background_mode]

    def configure_optimizers(self):
        o = self.opt
        lrs = {
            "means": o.means_lr_init * float(self.extent),
            "quats": o.quats_lr,
            "scales": o.scales_lr,
            "opacities": o.opacities_lr,
            "sh0": o.sh0_lr,
            "shN": o.shN_lr,
        }
        renderer_lrs, renderer_groups = self.renderer.optimizer_groups()
        return create_optimizer(self.gaussians, {**lrs, **renderer_lrs}, extra_groups=renderer_groups)

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        step = self.global_step  # optimizer steps done so far
        optimizer = self.optimizers()
        self._set_means_lr(optimizer.optimizer, step)
        self.renderer.begin_step(step, optimizer.optimizer, self.opt.means_lr_max_steps)
        if step > 0 and step % self.opt.sh_degree_interval == 0:
            self.gaussians.step_sh_degree()

        gt = batch.image.float() / 255.0
        background = self._training_background(gt.device)
        if batch.alpha is not None and self.background_mode == "random":
            # The image was composited on the scene background; put the random one behind it instead.
            a = batch.alpha.float()[..., None] / 255.0
            gt = gt + (1.0 - a) * (background - self.scene_background.to(gt.device))
        factor = self.opt.downscale_factor(step, self._random_init)
        camera, mask = batch.camera, batch.mask
        if factor > 1:
            camera, gt, mask = camera.scaled(factor), block_mean(gt, factor), _block_all(mask, factor)
        out = self.renderer(self.gaussians, camera, background, with_depth=False)  # the loss reads colours only
        collect_stats = self.density.wants_stats(step)  # no densification decision reads them afterwards
        if collect_stats:
            out.means2d.retain_grad()
        pred = out.colors[0]
        loss = photometric_loss(pred, gt, mask, self.opt.ssim_weight)  # (1-λ)·L1 + λ·(1-SSIM), fused on the CPU
        reg = self.density.regularization(self.gaussians)  # a strategy's own term (MCMC's), else None
        if reg is not None:
            loss = loss + reg
        # Its own novel-view renders: the photometric view's means2d gradient (densification) is untouched.
        guided = self.guidance(step, self.renderer, self.gaussians, background, self.generator) if self.guidance is not None else None
        if guided is not None:
            loss = loss + guided.loss
        finite = bool(torch.isfinite(loss))
        if finite or ddp.world_size() > 1:  # the others wait for this process's gradients either way
            self.manual_backward(loss)
        # Several processes: one flat all_reduce of the gradients and of the loss flag; no-op on one.
        n_bad = ddp.average_gradients(self, bad_loss=not finite)
        if n_bad:
            where = "" if ddp.world_size() == 1 else f" on {n_bad} of {ddp.world_size()} processes"
            mine = f"image {batch.name!r}" if not finite else "not on this process"
            raise NonFiniteLossError(
                f"the loss became {'non-finite' if finite else loss.item()} at step {step}{where} ({mine}, "
                f"{self.gaussians.num_gaussians} Gaussians); training stopped before the optimizer step and the last "
                "good checkpoint is kept. Resume with --ckpt_path last, and consider lower learning rates "
                "(--model.optimization.*_lr) or a different seed."
            )

        with torch.no_grad():
            if collect_stats and out.means2d.grad is not None:
                # Screen radii in full-size pixels (the max_screen_size vote); the gradient is in NDC units.
                radii = out.radii * factor if factor > 1 else out.radii
                self.density.update_stats(out.means2d.grad, radii, out.width, out.height)
            info = self.density.step(
                step, self.gaussians, optimizer.optimizer, float(self.extent), self.generator,
                white_background=bool(self.scene_background.min() >= 1.0),
            )
        if info and (info.get("densified") or info.get("reset")):
            ddp.check_same_model(self, optimizer, f"after densification at step {step}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():
            psnr = metrics.psnr(pred.detach().clamp(0, 1), gt, mask)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/psnr", psnr, prog_bar=True)
        self.log("gaussians", float(self.gaussians.num_gaussians), prog_bar=True)
        if guided is not None:
            self.log_dict({f"train/{k}": float(v) for k, v in guided.logs.items()})
        if info and any(info.get(k) for k in ("cloned", "split", "pruned", "relocated", "added")):
            self.log_dict({f"density/{k}": float(v) for k, v in info.items() if isinstance(v, (int, float))})
        return loss.detach()

    def _set_means_lr(self, optimizer, step: int) -> None:
        o = self.opt
        lr = exp_lr(step, o.means_lr_init * float(self.extent), o.means_lr_final * float(self.extent), o.means_lr_max_steps)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = lr * ddp.lr_factor(group)  # x sqrt(images per step) under several processes

    def _training_background(self, device) -> torch.Tensor:
        if self.background_mode == "random":
            return torch.rand(3, generator=self.generator).to(device)
        return self.scene_background.to(device)

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval_rows = []

    def on_test_epoch_start(self) -> None:
        self._eval_rows = []

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str) -> None:
        gt = batch.image.float() / 255.0
        # The renderer says which pixels count and by which protocol (an appearance model may fit an
        # unseen group's embedding on part of the image first).
        out, mask, protocol = self.renderer.render_for_evaluation(
            self.gaussians, batch.camera, self.scene_background.to(batch.image.device), gt, batch.mask)
        pred = out.colors[0].clamp(0, 1)
        row = {
            "image": batch.name,
            "psnr": float(metrics.psnr(pred, gt, mask)),
            "ssim": float(metrics.ssim(pred, gt, mask)),
        }
        if protocol is not None:
            row["protocol"] = protocol
        lpips = self._lpips_metric()
        if lpips is not None:
            row["lpips"] = lpips(pred if mask is None else pred * mask[..., None], gt if mask is None else gt * mask[..., None])
        self._eval_rows.append(row)
        if self.save_renders and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            folder = self._output_dir() / "renders" / f"{split}-step={self._step()}"
            folder.mkdir(parents=True, exist_ok=True)
            stem = Path(batch.name).stem
            save_png(pred, folder / f"{batch.index:05d}_{stem}_render.png")
            save_png(gt, folder / f"{batch.index:05d}_{stem}_gt.png")

    def _lpips_metric(self):
        if not self.compute_lpips:
            return None
        if self._lpips is None:
            self._lpips = metrics.LPIPS()
            if not self._lpips.available:
                self.print(f"LPIPS not computed: its backbone weights cannot be loaded here ({self._lpips.reason})")
        return self._lpips if self._lpips.available else None

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, split: str) -> None:
        rows = self._eval_rows
        if not rows:
            return
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim") + (("lpips",) if "lpips" in rows[0] else ())}
        for k, v in mean.items():
            # Every process evaluated every image with the same model: the values agree, and the (cheap)
            # mean over processes keeps Lightning's collectives and warnings in order under DDP.
            self.log(f"{split}/{k}", v, prog_bar=(k == "psnr"), sync_dist=ddp.world_size() > 1)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        folder = self._output_dir() / "metrics"
        folder.mkdir(parents=True, exist_ok=True)
        columns = ["image", "psnr", "ssim"] + (["lpips"] if "lpips" in rows[0] else [])
        protocol = ["protocol"] if "protocol" in rows[0] else []
        path = folder / f"{split}-step={self._step()}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns + protocol)
            for r in rows + [{"image": "MEAN", **mean}]:
                w.writerow([r["image"]] + [metrics.format_metric(r[c]) for c in columns[1:]] + [r.get(c, "") for c in protocol])
        lp = f", LPIPS {mean['lpips']:.4f}" if "lpips" in mean else (", LPIPS not computed" if self.compute_lpips else "")
        self.print(f"[{split} step {self._step()}] PSNR {mean['psnr']:.3f} dB, SSIM {mean['ssim']:.4f}{lp} "
                   f"over {len(rows)} images -> {path}")
        self.last_eval = {"split": split, "path": str(path), **mean}

    def predict_step(self, batch, batch_idx):
        out = self.renderer(self.gaussians, batch.camera, self.scene_background.to(batch.image.device))
        folder = self._output_dir() / "predict"
        folder.mkdir(parents=True, exist_ok=True)
        save_png(out.colors[0].clamp(0, 1), folder / f"{batch.index:05d}_{Path(batch.name).stem}.png")
        return None

    def _step(self) -> int:
        """The training step the Gaussians come from (validate/test/predict read it from the checkpoint)."""
        if self.trainer.state.fn == "fit":
            return self.global_step
        return getattr(self, "_checkpoint_step", self.global_step)

    def _output_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    # ---------------------------------------------------------------- several processes (internal/ddp.py)
    def on_fit_start(self) -> None:
        ddp.check_strategy(self.trainer)
        # Densification statistics are summed over processes right before each decision.
        self.density.reduce_fn = ddp.sum_across_processes if ddp.world_size() > 1 else None
        ddp.check_same_model(self, self.optimizers(use_pl_optimizer=False), f"start of training at step {self.global_step}")
        if self.guidance is not None:  # loads its model (never part of a checkpoint) and reads the training cameras
            self.guidance.setup(self.trainer.datamodule.scene, self.device, self.trainer.max_steps, self._output_dir())

    def on_train_start(self) -> None:
        # After the optimizer state is restored: Adam set for N images per step (N processes).
        ddp.scale_optimizer_for_batch(self.trainer, self.optimizers(use_pl_optimizer=False))

    def on_train_end(self) -> None:
        ddp.check_same_model(self, self.optimizers(use_pl_optimizer=False), f"end of training at step {self.global_step}")

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        ddp.globalize_density_stats(checkpoint, self)  # the statistics summed over processes
        checkpoint["gs_generator_state"] = self.generator.get_state()
        checkpoint["gs_renderer"] = self.renderer.checkpoint_config()
        checkpoint["gs_density"] = {k: v for k, v in vars(self.density).items()
                                    if not k.startswith("_") and isinstance(v, (int, float, bool))}
        if self.guidance is not None:
            checkpoint["gs_guidance"] = self.guidance.config()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        ddp.localize_density_stats(checkpoint, self)  # rank 0 takes them, other ranks start at zero
        self._checkpoint_step = int(checkpoint.get("global_step", 0))
        if "gs_generator_state" in checkpoint:
            self.generator.set_state(checkpoint["gs_generator_state"])


def save_png(img: torch.Tensor, path: Path) -> None:
    """(H,W,3) float in [0,1] -> 8-bit PNG."""
    arr = (img.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)


__all__ = ["GaussianSplatting", "OptimizationParams", "NonFiniteLossError", "save_png"]
