"""Score Distillation Sampling (DreamFusion, Poole et al. 2022) as a guidance loss on novel views.

    python main.py fit --config configs/blender.yaml --config configs/sds.yaml --data.path DATA \
        --model.guidance.init_args.model_path SD_FOLDER --model.guidance.init_args.prompt "a photo of ..."

At a guided step: render `num_views` novel views (internal/guidance/views.py) through the module's
renderer -> resize to `resolution` -> encode with the VAE to latents z (the posterior mean x the scaling
factor) -> draw t in the (annealed) `t_range` and ε ~ N(0, I) -> z_t = sqrt(ᾱ_t) z + sqrt(1-ᾱ_t) ε -> the
UNet with and without the prompt (classifier-free guidance, scale `guidance_scale`) -> ε̂ -> the
gradient of the latents of each of the B views, averaged over them,

    ∂L/∂z_b = weight · w(t_b) · (ε̂_b - ε_b) / B        w(t) = 1 - ᾱ_t ("dreamfusion") or 1 ("uniform")

pushed through the VAE encoder into the render and from there into the Gaussians. No gradient goes
through the UNet (the usual stop-gradient form): the loss is 0.5·||z - sg(z - w(t)(ε̂ - ε))||² summed
over latents and divided by B (its value, 0.5·|w(t)(ε̂ - ε)|² per view, is what threestudio logs),
times `weight`. That reduction matches threestudio's and DreamGaussian's, so weights from that literature
carry over: DreamGaussian adds SDS with weight 1 to 10,000 x a per-pixel mean image loss, i.e. a ratio
of 1e-4 against a mean photometric loss of weight 1 like ours, hence the default.

Densification statistics. The photometric view's screen-space gradient is what the 3DGS threshold was
tuned on (2e-4 for one photo's mean loss), so the novel-view renders do NOT feed the statistics: their
means2d gradients are never read, and the photometric view's means2d gradient is unaffected by the SDS
term (the two renders are separate graphs). The SDS gradient still moves every Gaussian it sees.

The diffusion model is loaded when fitting starts (and again on resume), frozen, and never part of the
module's state: checkpoints hold this class's configuration only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Guidance, GuidanceOutput
from .views import NovelViews, SceneFrame, sample_views, scene_frame


class SDSGuidance(Guidance):
    """Score Distillation Sampling with a local Stable Diffusion 1.x/2.x folder (module docstring).

    Args:
        model_path: a local diffusers Stable Diffusion folder (model_index.json, unet/, vae/,
            text_encoder/, tokenizer/, scheduler/). Nothing is downloaded.
        prompt: what the novel views should look like, e.g. "a photo of a yellow lego bulldozer".
        negative_prompt: the unconditional branch of classifier-free guidance ("" = unconditional).
        guidance_scale: classifier-free guidance scale (DreamFusion and threestudio: 100).
        weight: the SDS term's weight against the photometric loss (see the module docstring).
        weight_final: if set, the weight goes linearly from `weight` at start_step to this at end_step
            (or the last training step).
        t_range: timesteps drawn uniformly from this fraction of the schedule (DreamFusion: 0.02-0.98).
        t_range_final: if set, t_range is annealed linearly to it (e.g. (0.02, 0.5): finer detail later).
        t_weighting: w(t): "dreamfusion" (1 - ᾱ_t) or "uniform" (1).
        every, start_step, end_step: guide at steps start_step, start_step + every, ... < end_step.
        num_views: novel views per guided step (one batch through the VAE and UNet).
        resolution: the model's input size: renders are resized (bilinear) to resolution x resolution
            (512 for SD 1.5 and 2.1-base, 768 for 2.1); latents are resolution / 8.
        views: how novel views are drawn (internal/guidance/views.py).
        dtype: of the diffusion model: "auto" (float16 on CUDA, float32 on CPU), "float32", "float16",
            "bfloat16".
        device: where the diffusion model runs (None: the module's device).
        preview_every: at every preview_every-th guided step (counted from start_step), save the novel
            views over the model's one-step denoised estimate as <output>/guidance/step=S.png (0: never).
    """

    def __init__(
        self,
        model_path: str,
        prompt: str,
        negative_prompt: str = "",
        guidance_scale: float = 100.0,
        weight: float = 1e-4,
        weight_final: Optional[float] = None,
        t_range: tuple[float, float] = (0.02, 0.98),
        t_range_final: Optional[tuple[float, float]] = None,
        t_weighting: Literal["dreamfusion", "uniform"] = "dreamfusion",
        every: int = 1,
        start_step: int = 0,
        end_step: Optional[int] = None,
        num_views: int = 1,
        resolution: int = 512,
        views: NovelViews = NovelViews(),
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
        device: Optional[str] = None,
        preview_every: int = 0,
    ):
        super().__init__(every=every, start_step=start_step, end_step=end_step)
        for name, r in (("t_range", t_range), ("t_range_final", t_range_final)):
            if r is not None and not (0.0 <= r[0] <= r[1] <= 1.0):
                raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got {tuple(r)}")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (the VAE downsamples by 8), got {resolution}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if t_weighting not in ("dreamfusion", "uniform"):
            raise ValueError(f"t_weighting must be dreamfusion or uniform, got {t_weighting!r}")
        if views.render_size is not None and views.render_size < 8:
            raise ValueError(f"views.render_size must be >= 8 pixels, got {views.render_size}")
        if not (0 < views.radius_range[0] <= views.radius_range[1]):
            raise ValueError(f"views.radius_range must satisfy 0 < low <= high, got {tuple(views.radius_range)}")
        if not (-90.0 <= views.elevation_range[0] <= views.elevation_range[1] <= 90.0):
            raise ValueError(f"views.elevation_range must lie in [-90, 90] degrees, low <= high, got {tuple(views.elevation_range)}")
        self.model_path = model_path
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = float(guidance_scale)
        self.weight = float(weight)
        self.weight_final = weight_final
        self.t_range = tuple(float(x) for x in t_range)
        self.t_range_final = None if t_range_final is None else tuple(float(x) for x in t_range_final)
        self.t_weighting = t_weighting
        self.num_views = int(num_views)
        self.resolution = int(resolution)
        self.views = views
        self.dtype = dtype
        self.device = device
        self.preview_every = int(preview_every)
        self.init_args = {
            "model_path": model_path, "prompt": prompt, "negative_prompt": negative_prompt,
            "guidance_scale": guidance_scale, "weight": weight, "weight_final": weight_final,
            "t_range": list(t_range), "t_range_final": None if t_range_final is None else list(t_range_final),
            "t_weighting": t_weighting, "every": every, "start_step": start_step, "end_step": end_step,
            "num_views": num_views, "resolution": resolution, "views": dataclasses.asdict(views),
            "dtype": dtype, "device": device, "preview_every": preview_every,
        }
        # Set by setup(): never pickled into a checkpoint (the module keeps this object out of its hparams).
        self.sd = None
        self.cond: Optional[Tensor] = None
        self.uncond: Optional[Tensor] = None
        self.frame: Optional[SceneFrame] = None
        self.output_dir: Optional[Path] = None

    # ---------------------------------------------------------------- set-up
    def setup(self, scene, device: torch.device, max_steps: Optional[int] = None, output_dir=None) -> None:
        from .diffusion import load_stable_diffusion, resolve_dtype

        super().setup(scene, device, max_steps, output_dir)
        dev = torch.device(self.device) if self.device else torch.device(device)
        if self.sd is None or self.sd.device != dev:
            self.sd = load_stable_diffusion(self.model_path, dev, resolve_dtype(self.dtype, dev))
            self.cond, self.uncond = self.sd.encode_prompts([self.prompt, self.negative_prompt]).chunk(2)
        cams = scene.cameras[scene.train_ids]
        self.frame = scene_frame(cams, scene.points_xyz, self.views.center, self.views.radius)
        self.output_dir = Path(output_dir) if output_dir is not None else None

    # ---------------------------------------------------------------- the loss
    def sds_loss(self, images: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """The SDS loss of images (B,3,H,W) in [0,1] (any size: resized to `resolution`) at timesteps t
        (B,) with noise (B,C,h,w), unweighted. Returns (loss, latents); d loss / d latents is
        w(t)·(ε̂ - ε) / B (module docstring)."""
        sd = self.sd
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            shrink = images.shape[-1] > self.resolution or images.shape[-2] > self.resolution
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                                   antialias=shrink)
        latents = sd.encode_images(images)
        t = t.to(sd.device)
        noisy = sd.add_noise(latents.detach(), noise.to(latents.device, latents.dtype), t)
        eps = sd.predict_noise(noisy, t, self.cond, self.uncond, self.guidance_scale)
        w = 1.0 - sd.alphas_cumprod[t] if self.t_weighting == "dreamfusion" else torch.ones_like(sd.alphas_cumprod[t])
        grad = w.view(-1, 1, 1, 1) * (eps - noise.to(eps.device, eps.dtype))
        target = (latents.detach().float() - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]
        return loss, latents

    def timestep_range(self, step: int) -> tuple[int, int]:
        """[t_lo, t_hi] (inclusive integer timesteps) at this step, annealed."""
        lo, hi = self.t_range
        if self.t_range_final is not None:
            lo = self.annealed(lo, self.t_range_final[0], step)
            hi = self.annealed(hi, self.t_range_final[1], step)
        n = self.sd.num_train_timesteps
        t_lo = min(max(int(round(lo * n)), 0), n - 1)
        t_hi = min(max(int(round(hi * n)), t_lo), n - 1)
        return t_lo, t_hi

    def draw(self, step: int, g: torch.Generator) -> tuple:
        """This step's random choices, in a fixed order from the per-step CPU generator: the cameras,
        then t, then ε (drawn on the CPU and moved, so the draws do not depend on the device)."""
        size = self.views.render_size or self.resolution
        cams = sample_views(self.views, self.frame, self.num_views, size, g)
        t_lo, t_hi = self.timestep_range(step)
        t = torch.randint(t_lo, t_hi + 1, (self.num_views,), generator=g)
        c = int(self.sd.vae.config.latent_channels)
        noise = torch.randn((self.num_views, c, self.resolution // 8, self.resolution // 8), generator=g)
        return cams, t, noise

    def __call__(self, step: int, renderer, gaussians, background: Tensor, generator: torch.Generator) -> Optional[GuidanceOutput]:
        if not self.due(step):
            return None
        if self.sd is None:
            raise RuntimeError("SDSGuidance.setup() must run before the first guided step (the module does it at fit start)")
        cams, t, noise = self.draw(step, self.step_generator(generator))
        device = gaussians.means.device
        out = renderer(gaussians, cams.to(device), background)
        images = out.colors.permute(0, 3, 1, 2)  # (B,3,H,W)
        loss, latents = self.sds_loss(images, t, noise)
        weight = self.annealed(self.weight, self.weight_final, step)
        if self.preview_every and ((step - self.start_step) // self.every + 1) % self.preview_every == 0:
            self._save_preview(step, images, latents, t, noise)
        return GuidanceOutput(loss=weight * loss.to(device),
                              logs={"sds": float(loss.detach()), "sds_t": float(t.float().mean()), "sds_weight": weight})

    # ---------------------------------------------------------------- preview
    @torch.no_grad()
    def _save_preview(self, step: int, images: Tensor, latents: Tensor, t: Tensor, noise: Tensor) -> None:
        """The novel views (top) and the model's one-step estimate of the clean image x̂0 (bottom)."""
        from .. import ddp
        from ..atomic import atomic_write

        if self.output_dir is None or ddp.rank() != 0:
            return
        sd = self.sd
        tt = t.to(sd.device)
        noisy = sd.add_noise(latents.float(), noise.to(sd.device), tt)
        eps = sd.predict_noise(noisy, tt, self.cond, self.uncond, self.guidance_scale)
        a = sd.alphas_cumprod[tt].view(-1, 1, 1, 1)
        x0 = sd.decode_latents((noisy - (1 - a).sqrt() * eps) / a.sqrt())
        views = F.interpolate(images.detach().float(), size=x0.shape[-2:], mode="bilinear", align_corners=False).cpu()
        grid = torch.cat([torch.cat(list(views.clamp(0, 1)), dim=2), torch.cat(list(x0.cpu()), dim=2)], dim=1)
        arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        from PIL import Image

        path = self.output_dir / "guidance" / f"step={step}.png"
        atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))


__all__ = ["SDSGuidance"]
