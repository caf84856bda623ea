"""Benchmark: the cost of SDS guidance (internal/guidance/sds.py) on a training step.

    .venv/bin/python bench/sds.py                       # tiny model: guided vs plain step at 64 and 128 px
    .venv/bin/python bench/sds.py --sd                  # + the Stable Diffusion 1.5 / 2.1 estimate (needs ~4.5 GB)

1. Measured, side by side: a plain training step (render a 3DGS training view, masked L1 + SSIM,
   backward, Adam step; as GaussianSplatting.training_step does) against the same step plus one SDS
   call (render a novel view, VAE encoder, UNet with CFG, gradient back through the encoder), with the
   tiny random Stable Diffusion of internal/guidance/tiny.py, the two alternating, medians of --repeats.
   The tiny model shows the cost of the plumbing, not of a real diffusion model.

2. --sd: an estimate for Stable Diffusion 1.5 (512 px), 2.1-base (512 px) and 2.1 (768 px, v-prediction).
   FLOPs: counted by torch's FlopCounterMode on the real architectures (diffusers' UNet2DConditionModel,
   AutoencoderKL with SD's configs) built on the meta device: the UNet once on a batch of 2 (CFG) and
   the VAE encoder forward + backward to its input (weights frozen). CPU: the same SD 1.5 UNet and VAE
   encoder with random float32 weights, timed here at a quarter of the pixels (UNet on 32x32 latents,
   encoder at 256 px: memory stays ~4.5 GB), their FLOP rate applied to the full-size counts.
   GPU: the counts divided by the rate a published benchmark implies (A100 80GB SXM, diffusers 1.5,
   torch 2.1 SDPA, fp16: 31.19 UNet it/s with CFG at 512 px, i.e. 1.61 TFLOP x 31.19 = ~50 TFLOP/s);
   no GPU was available to measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from internal import metrics  # noqa: E402
from internal.data.datamodule import DataModule  # noqa: E402
from internal.demo_scene import generate_demo_scene  # noqa: E402
from internal.gaussians import GaussianModel  # noqa: E402
from internal.guidance import NovelViews, SDSGuidance  # noqa: E402
from internal.guidance.tiny import build_tiny_stable_diffusion  # noqa: E402
from internal.optim import create_optimizer  # noqa: E402
from internal.renderers import VanillaRenderer  # noqa: E402

A100_UNET_ITS = 31.19  # SD 1.5 512 px, CFG, fp16, diffusers + torch 2.1 SDPA, A100 80GB SXM (published)


def training_setup(root: Path, size: int, n_gaussians: int):
    generate_demo_scene(root / f"demo{size}", width=size, height=size, n_views=16, ss=1, n_points=500, formats=("blender",))
    dm = DataModule(str(root / f"demo{size}" / "blender"))
    dm.setup("fit")
    scene = dm.scene
    gen = torch.Generator().manual_seed(0)
    gaussians = GaussianModel(3)
    gaussians.init_from_points(torch.rand(n_gaussians, 3, generator=gen) * 2 - 1, torch.rand(n_gaussians, 3, generator=gen), 0.1)
    opt = create_optimizer(gaussians, {"means": 1.6e-4, "quats": 1e-3, "scales": 5e-3, "opacities": 0.05, "sh0": 2.5e-3, "shN": 1.25e-4})
    batch = next(iter(dm.train_dataloader()))
    return scene, gaussians, opt, batch


def train_step(gaussians, opt, renderer, batch, guidance=None, step=0, generator=None):
    gt = batch.image.float() / 255.0
    bg = torch.ones(3)
    out = renderer(gaussians, batch.camera, bg)
    loss = 0.8 * metrics.l1(out.colors[0], gt, batch.mask) + 0.2 * (1 - metrics.ssim(out.colors[0], gt, batch.mask))
    if guidance is not None:
        loss = loss + guidance(step, renderer, gaussians, bg, generator).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_tiny(sizes, repeats: int, n_gaussians: int) -> None:
    print(f"## guided vs plain training step, tiny random SD (internal/guidance/tiny.py), {n_gaussians} Gaussians, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'px':>5} {'plain ms':>10} {'guided ms':>10} {'ratio':>7} {'SDS part ms':>12} {'plain CPU ms':>13} "
          f"{'guided CPU ms':>14} {'CPU ratio':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = build_tiny_stable_diffusion(root / "tiny_sd")
        for size in sizes:
            scene, gaussians, opt, batch = training_setup(root, size, n_gaussians)
            renderer = VanillaRenderer("auto")
            g = SDSGuidance(str(folder), "a photo of a toy", resolution=size, guidance_scale=100.0, weight=1e-4,
                            views=NovelViews(mode="interpolate"))
            g.setup(scene, torch.device("cpu"), max_steps=1000)
            shared = torch.Generator().manual_seed(0)
            for _ in range(2):  # warm-up
                train_step(gaussians, opt, renderer, batch)
                train_step(gaussians, opt, renderer, batch, g, 0, shared)
            plain, guided, plain_cpu, guided_cpu = [], [], [], []
            for _ in range(repeats):
                for fn, wall, cpu in ((lambda: train_step(gaussians, opt, renderer, batch), plain, plain_cpu),
                                      (lambda: train_step(gaussians, opt, renderer, batch, g, 0, shared), guided, guided_cpu)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            p, q = statistics.median(plain) * 1e3, statistics.median(guided) * 1e3
            pc, qc = statistics.median(plain_cpu) * 1e3, statistics.median(guided_cpu) * 1e3
            print(f"{size:>5} {p:>10.1f} {q:>10.1f} {q / p:>6.2f}x {q - p:>12.1f} {pc:>13.1f} {qc:>14.1f} {qc / pc:>9.2f}x")


# ---------------------------------------------------------------------------- Stable Diffusion sizes

def sd_configs():
    unet15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    unet21 = dict(unet15, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4)
    return unet15, unet21, vae


def unet_call(unet, latent: int, ctx: int, device="cpu"):
    x = torch.randn(2, 4, latent, latent, device=device)
    t = torch.tensor([500, 500], device=device)
    c = torch.randn(2, 77, ctx, device=device)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=c)


def encoder_call(vae, px: int, device="cpu"):
    img = torch.rand(1, 3, px, px, device=device, requires_grad=True)
    z = vae.encode(img * 2 - 1).latent_dist.mean
    z.backward(torch.ones_like(z))


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while fn runs (the activation memory of a
    backward pass; counted on the meta device, so nothing is allocated)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock seconds and median CPU seconds of this process (all its threads) per call."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_sd(repeats: int) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet15, unet21, vae_cfg = sd_configs()
    with torch.device("meta"):
        u15, u21, vae = UNet2DConditionModel(**unet15), UNet2DConditionModel(**unet21), AutoencoderKL(**vae_cfg)
    for m in (u15, u21, vae):
        m.requires_grad_(False)
    mparams = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"\n## Stable Diffusion sizes (architectures built on the meta device): UNet 1.5 {mparams(u15):.1f} M, "
          f"UNet 2.1 {mparams(u21):.1f} M, VAE {mparams(vae):.1f} M parameters")
    cases = [("SD 1.5", u15, 512, 768), ("SD 2.1-base", u21, 512, 1024), ("SD 2.1 (768-v)", u21, 768, 1024)]
    counts, activations = {}, {}
    for name, u, px, ctx in cases:
        counts[name] = (flops(lambda: unet_call(u, px // 8, ctx, "meta")), flops(lambda: encoder_call(vae, px, "meta")))
        activations[name] = saved_bytes(lambda: encoder_call(vae, px, "meta")) / 2  # float32 counted; float16 on a GPU
    # CPU: the real SD 1.5 UNet and VAE encoder, random float32 weights, at a quarter of the pixels.
    print(f"timing the SD 1.5 UNet (32x32 latents, batch 2) and VAE encoder (256 px, fwd+bwd) on this CPU, "
          f"{torch.get_num_threads()} threads ...", flush=True)
    threads = torch.get_num_threads()
    u = UNet2DConditionModel(**unet15).requires_grad_(False).eval()
    (w_unet, c_unet), f_unet = timed(lambda: unet_call(u, 32, 768), repeats), flops(lambda: unet_call(u, 32, 768))
    del u
    v = AutoencoderKL(**vae_cfg).requires_grad_(False).eval()
    (w_enc, c_enc), f_enc = timed(lambda: encoder_call(v, 256), repeats), flops(lambda: encoder_call(v, 256))
    del v
    # Wall-clock rates include whatever else the machine runs; CPU seconds / threads is what an otherwise
    # idle machine would take with perfect scaling over the threads (a projection, printed beside it).
    rate_unet, rate_enc = f_unet / w_unet, f_enc / w_enc
    idle_unet, idle_enc = f_unet / (c_unet / threads), f_enc / (c_enc / threads)
    print(f"measured: UNet {w_unet:.2f} s wall, {c_unet:.2f} CPU s ({rate_unet / 1e9:.0f} GFLOP/s wall, "
          f"{idle_unet / 1e9:.0f} projected idle); encoder fwd+bwd {w_enc:.2f} s wall, {c_enc:.2f} CPU s "
          f"({rate_enc / 1e9:.0f} GFLOP/s wall, {idle_enc / 1e9:.0f} projected idle)")
    gpu_rate = counts["SD 1.5"][0] * A100_UNET_ITS
    print(f"GPU rate from the published A100 figure: {gpu_rate / 1e12:.0f} TFLOP/s (applied to the UNet and the encoder alike)")
    print(f"\n{'model':<16} {'px':>4} {'UNet x2 TFLOP':>14} {'enc f+b TFLOP':>14} {'CPU s/step':>11} "
          f"{'idle CPU s/step':>16} {'A100 ms/step':>13} {'enc saved GB fp16':>18}")
    for name, _, px, _ in cases:
        fu, fe = counts[name]
        cpu = fu / rate_unet + fe / rate_enc
        idle = fu / idle_unet + fe / idle_enc
        gpu = (fu + fe) / gpu_rate
        print(f"{name:<16} {px:>4} {fu / 1e12:>14.2f} {fe / 1e12:>14.2f} {cpu:>11.1f} {idle:>16.1f} {gpu * 1e3:>13.0f} "
              f"{activations[name] / 2**30:>18.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--gaussians", type=int, default=20000)
    ap.add_argument("--sd", action="store_true", help="also estimate SD 1.5 / 2.1 sizes (times the real architectures here)")
    ap.add_argument("--sd-repeats", type=int, default=3)
    a = ap.parse_args()
    bench_tiny(a.sizes, a.repeats, a.gaussians)
    if a.sd:
        bench_sd(a.sd_repeats)


if __name__ == "__main__":
    main()
