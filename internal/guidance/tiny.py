"""A tiny, randomly initialised Stable Diffusion folder in the diffusers layout, built offline.

    python -m internal.guidance.tiny OUT_FOLDER [--prediction-type v_prediction]

It has the real architecture classes (UNet2DConditionModel with cross-attention, AutoencoderKL with
an 8x downsampling encoder, CLIPTextModel, a CLIP BPE tokenizer, a DDPM noise schedule as SD's) with
a few thousand parameters each, so the whole SDS code path - loading from a folder, prompts, VAE
encoding, classifier-free guidance, the gradient through the encoder - runs in tests and benchmarks
in well under a second per step on a CPU. Its images mean nothing: no weights can be had here.
Needs the optional extra (requirements-sds.txt).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# SD 1.x/2.x noise schedule, as the public pipelines ship it: a PNDMScheduler config (SDS reads only the
# training schedule from it, through DDPMScheduler, as it would from any of SD's schedulers).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)

TOKENS = "abcdefghijklmnopqrstuvwxyz0123456789"


def write_tokenizer(folder: Path, max_length: int = 77) -> None:
    """A CLIP BPE tokenizer over lowercase letters and digits (+ end-of-word forms) and a few merges,
    written as SD's tokenizer folders are (vocab.json, merges.txt, tokenizer_config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = [("t", "h"), ("th", "e</w>"), ("o", "n</w>"), ("a", "r")]
    tokens = list(TOKENS) + [c + "</w>" for c in TOKENS] + [a + b for a, b in merges]
    vocab = {tok: i for i, tok in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def build_tiny_stable_diffusion(folder, seed: int = 0, prediction_type: str = "epsilon", text_dim: int = 16) -> Path:
    """Write a tiny random Stable Diffusion folder at `folder` and return its path."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" for a 30 kB file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=64,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    write_tokenizer(folder / "tokenizer")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.42.1", "prediction_type": prediction_type, **SD_SCHEDULE}, indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False}, indent=2))
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    a = ap.parse_args(argv)
    print(build_tiny_stable_diffusion(a.folder, a.seed, a.prediction_type))


if __name__ == "__main__":
    main()


__all__ = ["build_tiny_stable_diffusion", "write_tokenizer", "SD_SCHEDULE"]
