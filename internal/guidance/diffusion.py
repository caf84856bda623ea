"""A local Stable Diffusion 1.x/2.x folder (diffusers layout) as the parts SDS needs.

    check_model_folder(path)                      # one-line GuidanceError naming what is missing
    sd = load_stable_diffusion(path, device, dtype)
    embeds = sd.encode_prompts(["a photo of ..."])  # (B,77,D) text-encoder states, no gradient
    latents = sd.encode_images(images)            # (B,3,H,W) in [0,1] -> (B,4,H/8,W/8), differentiable
    eps = sd.predict_noise(noisy, t, cond, uncond, guidance_scale)   # classifier-free guided epsilon

diffusers and transformers are an optional extra (requirements-sds.txt), imported here only when a
model is loaded. Nothing is downloaded: the hub libraries are put offline (HF_HUB_OFFLINE=1) and every
component is read with local_files_only=True from the folder the user gave (a folder as
`StableDiffusionPipeline.save_pretrained` writes it, or a Hugging Face snapshot folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .base import GuidanceError

# What a folder must hold. Weight files may be safetensors or .bin, whole or sharded (an index), with
# or without the "fp16" variant infix (diffusers' naming).
LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/"
WEIGHTS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": ("model", "pytorch_model"),
}
CLASSES = {  # model_index.json entries we can load
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
INSTALL_HINT = "pip install -c constraints.txt -r requirements-sds.txt (scripts/setup.sh installs it)"


def _weights_variant(folder: Path, stems) -> Optional[str]:
    """"" when plain weights exist, "fp16" when only the fp16 variant does, None when none do."""
    stems = (stems,) if isinstance(stems, str) else stems
    for variant, infix in (("", ""), ("fp16", ".fp16")):
        for stem in stems:
            for ext in (".safetensors", ".bin"):
                if (folder / f"{stem}{infix}{ext}").is_file() or (folder / f"{stem}{infix}{ext}.index.json").is_file():
                    return variant
    return None


def check_model_folder(path) -> dict[str, str]:
    """Check that `path` is a complete local diffusers Stable Diffusion 1.x/2.x folder; return the
    weight variant of each weighted component ("" or "fp16"). Raises GuidanceError with one line."""
    p = Path(os.path.expanduser(str(path)))
    where = f"SDS model folder {p}"
    need = (f"it must be a local diffusers Stable Diffusion 1.x/2.x folder holding {LAYOUT} "
            "(nothing is downloaded at run time)")
    if not p.exists():
        raise GuidanceError(f"{where} does not exist: {need}; pass it with --model.guidance.init_args.model_path")
    if not p.is_dir():
        raise GuidanceError(f"{where} is not a folder: {need}")
    missing = []
    index: dict[str, Any] = {}
    if (p / "model_index.json").is_file():
        try:
            index = json.loads((p / "model_index.json").read_text())
        except (OSError, ValueError) as exc:
            raise GuidanceError(f"{where}: model_index.json cannot be read ({exc}); {need}") from None
    else:
        missing.append("model_index.json")
    variants: dict[str, str] = {}
    for part in ("unet", "vae", "text_encoder"):
        d = p / part
        if not (d / "config.json").is_file():
            missing.append(f"{part}/config.json")
        v = _weights_variant(d, WEIGHTS[part])
        if v is None:
            stems = WEIGHTS[part] if isinstance(WEIGHTS[part], tuple) else (WEIGHTS[part],)
            missing.append(f"{part}/{stems[0]}.safetensors (or .bin)")
        else:
            variants[part] = v
    tok = p / "tokenizer"
    if not ((tok / "tokenizer.json").is_file() or ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file())):
        missing.append("tokenizer/vocab.json + merges.txt (or tokenizer.json)")
    if not (p / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        raise GuidanceError(f"{where} is incomplete, missing {', '.join(missing)}: {need}")
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        raise GuidanceError(f"{where} is a Stable Diffusion XL pipeline ({index.get('_class_name')}); SDS guidance "
                            "supports Stable Diffusion 1.x/2.x folders (one CLIP text encoder)")
    for part, allowed in CLASSES.items():
        entry = index.get(part)
        cls = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        if cls is not None and cls not in allowed:
            raise GuidanceError(f"{where}: model_index.json names {cls} for {part}; SDS guidance loads "
                                f"{' or '.join(allowed)} (a Stable Diffusion 1.x/2.x folder)")
    return variants


def _import_extra():
    """Import diffusers and transformers offline, or a GuidanceError saying how to install them."""
    # Belt and braces: every load passes local_files_only=True; the variables below also put the hub
    # libraries offline when they are first imported here (main.py sets HF_HUB_OFFLINE at start-up,
    # since torchmetrics may import them earlier).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise GuidanceError(f"SDS guidance needs the optional diffusers/transformers extra ({exc}): {INSTALL_HINT}") from None
    diffusers.utils.logging.disable_progress_bar()  # per-file "Loading weights" bars at every start
    transformers.utils.logging.disable_progress_bar()
    return diffusers, transformers


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}") from None


@dataclass
class StableDiffusion:
    """The frozen parts of a Stable Diffusion pipeline that SDS uses."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    alphas_cumprod: Tensor  # (T,) float32 on the model's device: ᾱ_t of the training noise schedule
    prediction_type: str  # "epsilon" or "v_prediction" (what the UNet outputs)
    scaling_factor: float  # latents = scaling_factor x the VAE posterior
    device: torch.device
    dtype: torch.dtype

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Text-encoder hidden states (B, L, D) for the prompts, padded to the encoder's length."""
        n = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        ids = self.tokenizer(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    def encode_images(self, images: Tensor) -> Tensor:
        """(B,3,H,W) RGB in [0,1] -> latents (B,C,H/8,W/8): the VAE posterior's mean x scaling factor.
        Differentiable with respect to the images (the VAE's own weights are frozen)."""
        x = images.to(self.device, self.dtype) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents -> (B,3,H,W) RGB in [0,1] (for previews)."""
        x = self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a = self.alphas_cumprod[t].to(latents.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * latents + (1.0 - a).sqrt() * noise

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
        """Classifier-free guided ε̂ = ε_u + s (ε_c - ε_u): one UNet call on the batch of both
        (a v-predicting model's output is turned into ε: ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t)."""
        b = noisy.shape[0]
        x = torch.cat([noisy, noisy]).to(self.dtype)
        tt = torch.cat([t, t]).to(self.device)
        ctx = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)]).to(self.dtype)
        out = self.unet(x, tt, encoder_hidden_states=ctx).sample.float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[tt].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1.0 - a).sqrt() * x.float()
        elif self.prediction_type != "epsilon":
            raise GuidanceError(f"the model's scheduler predicts {self.prediction_type!r}; SDS supports epsilon and v_prediction")
        eps_u, eps_c = out.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)


def load_stable_diffusion(path, device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    """Load the frozen UNet, VAE, text encoder, tokenizer and noise schedule from a local folder."""
    variants = check_model_folder(path)
    diffusers, transformers = _import_extra()
    p = Path(os.path.expanduser(str(path)))
    common = dict(local_files_only=True)

    def model(cls, part):
        kw = dict(common, subfolder=part, torch_dtype=dtype)
        if variants.get(part):
            kw["variant"] = variants[part]
        try:
            m = cls.from_pretrained(str(p), **kw)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            msg = " ".join(str(exc).split())[:300]
            raise GuidanceError(f"SDS model folder {p}: {part}/ cannot be loaded ({type(exc).__name__}: {msg}); "
                                f"it must hold a diffusers {cls.__name__} (config.json and weights)") from None
        return m.to(device).eval().requires_grad_(False)

    unet = model(diffusers.UNet2DConditionModel, "unet")
    vae = model(diffusers.AutoencoderKL, "vae")
    text_encoder = model(transformers.CLIPTextModel, "text_encoder")
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(p), subfolder="tokenizer", **common)
        scheduler = diffusers.DDPMScheduler.from_pretrained(str(p), subfolder="scheduler", **common)
    except (OSError, ValueError, KeyError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise GuidanceError(f"SDS model folder {p}: tokenizer/ or scheduler/ cannot be loaded ({msg})") from None
    if unet.config.in_channels != vae.config.latent_channels:
        raise GuidanceError(f"SDS model folder {p}: the UNet takes {unet.config.in_channels} channels but the VAE makes "
                            f"{vae.config.latent_channels} (an inpainting or other variant?); use a text-to-image "
                            "Stable Diffusion 1.x/2.x folder")
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise GuidanceError(f"SDS model folder {p}: the UNet attends to {unet.config.cross_attention_dim}-wide text states "
                            f"but the text encoder makes {text_encoder.config.hidden_size}")
    return StableDiffusion(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
        prediction_type=str(scheduler.config.prediction_type),
        scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)),
        device=device,
        dtype=dtype,
    )


__all__ = ["LAYOUT", "StableDiffusion", "check_model_folder", "load_stable_diffusion", "resolve_dtype"]
