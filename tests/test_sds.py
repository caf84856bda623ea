"""SDS guidance (internal/guidance/sds.py) with a tiny randomly initialised Stable Diffusion built here
(internal/guidance/tiny.py: diffusers' and transformers' own classes, saved to a folder and loaded back
through the real code path). No weights are downloaded; the images it likes mean nothing, but every
piece of the gradient is real: VAE encoder, noise schedule, UNet with classifier-free guidance.

Checks: offline loading; the gradient SDS puts on the render equals w(t)(ε̂_cfg - ε) pushed through the
encoder, computed independently here (separate UNet calls, diffusers' add_noise, a vector-Jacobian
product through the VAE encoder), for ε- and v-predicting models; the guided step through the module's
renderer reaches the Gaussians; the public CLI fits with guidance and resumes bit-exactly; the
densification statistics stay the photometric view's; checkpoints hold the configuration, not the model;
two processes stay bit-identical while guiding different views.
"""

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers", reason="the optional SDS extra is not installed: "
                    "pip install -c constraints.txt -r requirements-sds.txt (scripts/setup.sh installs it)")
pytest.importorskip("transformers", reason="the optional SDS extra is not installed: "
                    "pip install -c constraints.txt -r requirements-sds.txt (scripts/setup.sh installs it)")

from internal.data.datamodule import DataModule  # noqa: E402
from internal.demo_scene import generate_demo_scene  # noqa: E402
from internal.gaussians import GaussianModel  # noqa: E402
from internal.guidance import NovelViews, SDSGuidance  # noqa: E402
from internal.guidance.diffusion import load_stable_diffusion  # noqa: E402
from internal.guidance.tiny import build_tiny_stable_diffusion  # noqa: E402
from internal.renderers import VanillaRenderer  # noqa: E402
from tests.sds_probe import RecordGuidance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT, NEGATIVE = "a photo of the lego bulldozer", "blurry"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """{prediction type: folder} of tiny random SD pipelines."""
    root = tmp_path_factory.mktemp("tiny_sd")
    return {p: build_tiny_stable_diffusion(root / p, seed=1, prediction_type=p) for p in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_sds")
    generate_demo_scene(root, width=96, height=96, n_views=24, ss=1, n_points=1500, formats=("blender",))
    return root / "blender"


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py"])  # LightningCLI warns when both sys.argv and args are given


def make_guidance(folder, scene=None, **kw):
    g = SDSGuidance(str(folder), PROMPT, negative_prompt=NEGATIVE, resolution=64, **kw)
    if scene is None:
        from tests.test_guidance import ring_cameras

        scene = SimpleNamespace(cameras=ring_cameras(n=8, radius=3.0, center=(0, 0, 0)), train_ids=list(range(8)), points_xyz=None)
    g.setup(scene, torch.device("cpu"), max_steps=100)
    return g


def closed_form_render_gradient(folder, images, t, noise, guidance_scale, weighting="dreamfusion", resolution=64):
    """d(SDS)/d(images) = J_encoder^T w(t)(ε̂_cfg - ε) / B (the mean over the B views), written
    independently of internal/guidance: own copies of every part, one UNet call per branch, diffusers'
    own add_noise, and a VJP through the encoder. Also returns the per-view latent gradient."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval()
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    with torch.no_grad():
        def embed(p):
            return text(tok([p], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
        cond, uncond = embed(PROMPT), embed(NEGATIVE)
    x = images.detach().clone().requires_grad_(True)
    xr = x if x.shape[-1] == resolution else F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    latents = vae.encode(2 * xr - 1).latent_dist.mean * vae.config.scaling_factor
    noisy = sched.add_noise(latents.detach(), noise, t)
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        def eps(ctx):
            out = unet(noisy, t, encoder_hidden_states=ctx.expand(len(t), -1, -1)).sample
            if sched.config.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1-abar) x0
                out = abar.sqrt() * out + (1 - abar).sqrt() * noisy
            return out
        e_u, e_c = eps(uncond), eps(cond)
    eps_cfg = e_u + guidance_scale * (e_c - e_u)
    w = (1 - abar) if weighting == "dreamfusion" else torch.ones_like(abar)
    g_latents = w * (eps_cfg - noise)
    (g_images,) = torch.autograd.grad(latents, x, grad_outputs=g_latents / len(t))
    return g_images, g_latents


def test_loads_offline_and_encodes_prompts(tiny_sd, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    sd = load_stable_diffusion(tiny_sd["v_prediction"], torch.device("cpu"), torch.float32)
    assert sd.prediction_type == "v_prediction" and sd.num_train_timesteps == 1000
    assert sd.scaling_factor == pytest.approx(0.18215)
    # SD's scaled-linear schedule: alpha_bar falls from 1 - 0.00085 to ~0.0047.
    assert float(sd.alphas_cumprod[0]) == pytest.approx(1 - 0.00085, rel=1e-6)
    assert float(sd.alphas_cumprod[-1]) == pytest.approx(0.00466, rel=0.01)
    e = sd.encode_prompts([PROMPT, NEGATIVE, PROMPT])
    assert e.shape == (3, 77, 16) and torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])
    assert not any(p.requires_grad for p in sd.unet.parameters())
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize("prediction_type,size,weighting", [("epsilon", 64, "dreamfusion"), ("v_prediction", 48, "uniform")])
def test_sds_gradient_equals_the_closed_form(tiny_sd, prediction_type, size, weighting):
    folder = tiny_sd[prediction_type]
    g = make_guidance(folder, guidance_scale=7.5, t_weighting=weighting)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=gen).requires_grad_(True)
    t = torch.tensor([35, 810])
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    loss, latents = g.sds_loss(images, t, noise)
    assert loss.shape == () and torch.isfinite(loss) and latents.shape == (2, 4, 8, 8)
    (grad,) = torch.autograd.grad(loss, images)
    expect, g_latents = closed_form_render_gradient(folder, images, t, noise, 7.5, weighting)
    assert grad.shape == images.shape and torch.isfinite(grad).all() and grad.abs().max() > 0
    torch.testing.assert_close(grad, expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
    # The value logged is 0.5 |dL/dz|^2 per view (threestudio's).
    assert float(loss) == pytest.approx(0.5 * float((g_latents**2).sum()) / 2, rel=1e-4)
    # The UNet is outside the graph: nothing but the render carries a gradient.
    assert all(p.grad is None for p in g.sd.unet.parameters()) and all(p.grad is None for p in g.sd.vae.parameters())


def test_guided_step_through_the_renderer_reaches_the_gaussians(tiny_sd, demo):
    scene = DataModule(str(demo)).scene
    g = make_guidance(tiny_sd["epsilon"], scene, guidance_scale=20.0, num_views=2, every=2, weight=0.5,
                      views=NovelViews(mode="orbit", render_size=48))
    gen = torch.Generator().manual_seed(0)
    gaussians = GaussianModel(1)
    gaussians.init_from_points(torch.rand(3000, 3, generator=gen) * 2 - 1, torch.rand(3000, 3, generator=gen), 0.5)
    renderer = VanillaRenderer("cpu")
    outputs = []

    class Recording(torch.nn.Module):
        def forward(self, *args, **kwargs):
            out = renderer(*args, **kwargs)
            out.colors.retain_grad()
            outputs.append(out)
            return out

    draws = []
    draw = g.draw
    g.draw = lambda step, gen_: draws.append(draw(step, gen_)) or draws[-1]
    shared = torch.Generator().manual_seed(5)
    bg = torch.ones(3)
    assert g(1, Recording(), gaussians, bg, shared) is None  # not due: nothing drawn
    assert torch.equal(shared.get_state(), torch.Generator().manual_seed(5).get_state())
    out = g(2, Recording(), gaussians, bg, shared)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert set(out.logs) == {"sds", "sds_t", "sds_weight"} and out.logs["sds_weight"] == 0.5
    out.loss.backward()
    render = outputs[-1]
    assert render.colors.shape == (2, 48, 48, 3)
    for name in GaussianModel.PARAM_NAMES:
        grad = getattr(gaussians, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
    assert gaussians.means.grad.abs().sum() > 0 and gaussians.sh0.grad.abs().sum() > 0
    # The gradient on the render is weight x the closed form (resized 48 -> 64 inside).
    _, t, noise = draws[-1]
    expect, _ = closed_form_render_gradient(tiny_sd["epsilon"], render.colors.detach().permute(0, 3, 1, 2), t, noise, 20.0)
    got = render.colors.grad.permute(0, 3, 1, 2)
    torch.testing.assert_close(got, 0.5 * expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
    # Deterministic given the shared generator's state; the step advanced it by one draw.
    again = g(2, renderer, gaussians, bg, torch.Generator().manual_seed(5))
    assert float(again.loss) == float(out.loss)
    assert not torch.equal(shared.get_state(), torch.Generator().manual_seed(5).get_state())


# ---------------------------------------------------------------------------- through the CLI

GUIDE = ["--model.guidance", "SDSGuidance", "--model.guidance.prompt", PROMPT, "--model.guidance.resolution", "64",
         "--model.guidance.guidance_scale", "20", "--model.guidance.weight", "0.01", "--model.guidance.every", "3",
         "--model.guidance.views.render_size", "48", "--model.guidance.views.mode", "orbit"]


def guided(tiny_sd, *extra):
    return [*GUIDE, "--model.guidance.model_path", str(tiny_sd["epsilon"]), *extra]


def test_fit_with_guidance_resumes_exactly_and_writes_previews(demo, tiny_sd, tmp_path):
    from tests.test_training import assert_same_training_state, fit, make_cli

    # 21 training views: stop at the end of epoch 1 (step 21) and resume to 42; densification at steps
    # 19, 29 and 39, opacity reset at 29.
    a, b = 21, 42
    extra = guided(tiny_sd, "--model.guidance.preview_every", "5", "--checkpoint_every", str(a),
                   "--model.density.init_args.densify_from", "10", "--model.density.init_args.densify_every", "10")
    straight = make_cli(demo.parent, tmp_path, "straight", b, *extra)
    probe = RecordGuidance()
    straight.trainer.callbacks.append(probe)
    counts = fit(straight).counts
    assert len(set(counts)) > 2  # densified (and pruned) while guided
    first = make_cli(demo.parent, tmp_path, "resumed", a, *extra)
    fit(first)
    second = make_cli(demo.parent, tmp_path, "resumed", b, *extra)
    fit(second, ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert_same_training_state(straight, second)
    assert second.trainer.global_step == b
    assert [row["step"] for row in probe.rows] == list(range(0, b, 3))
    # Previews at every 5th guided step: the novel view over the model's one-step estimate.
    previews = sorted((tmp_path / "straight" / "guidance").glob("step=*.png"))
    assert [p.name for p in previews] == ["step=12.png", "step=27.png"]
    assert sorted(p.name for p in (tmp_path / "resumed" / "guidance").glob("step=*.png")) == ["step=12.png", "step=27.png"]
    from PIL import Image

    assert Image.open(previews[0]).size == (64, 128)


def test_guidance_leaves_density_statistics_and_checkpoint_size_alone(demo, tiny_sd, tmp_path):
    """One step from the same start, with and without guidance: the Gaussians move differently, but
    the densification statistics (the photometric view's screen-space gradient) are the same, and
    the checkpoints differ only by the guidance's configuration."""
    from tests.test_training import fit, make_cli

    common = ["--save_steps", "[1]", "--model.density.init_args.densify_from", "0"]
    plain = make_cli(demo.parent, tmp_path, "plain", 1, *common)
    fit(plain)
    sds = make_cli(demo.parent, tmp_path, "sds", 1, *common, *guided(tiny_sd, "--model.guidance.weight", "1.0"))
    probe = RecordGuidance()
    sds.trainer.callbacks.append(probe)
    fit(sds)
    assert [row["step"] for row in probe.rows] == [0]
    dp, ds = plain.model.density, sds.model.density
    assert dp.count.sum() > 0 and dp.grad_accum.sum() > 0
    assert torch.equal(dp.count, ds.count) and torch.equal(dp.grad_accum, ds.grad_accum) and torch.equal(dp.max_radii, ds.max_radii)
    assert not torch.equal(plain.model.gaussians.means, sds.model.gaussians.means)
    # Checkpoints: the same tensors, plus a few hundred bytes of configuration.
    cp, cs = (torch.load(tmp_path / n / "checkpoints" / "step=1.ckpt", weights_only=False) for n in ("plain", "sds"))
    assert cp["state_dict"].keys() == cs["state_dict"].keys()
    assert "guidance" not in cs["hyper_parameters"]
    assert cs["gs_guidance"]["class_path"] == "internal.guidance.sds.SDSGuidance"
    assert cs["gs_guidance"]["init_args"]["model_path"] == str(tiny_sd["epsilon"])
    grown = (tmp_path / "sds" / "checkpoints" / "step=1.ckpt").stat().st_size - (tmp_path / "plain" / "checkpoints" / "step=1.ckpt").stat().st_size
    unet_bytes = (tiny_sd["epsilon"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert 0 < grown < 4096 < unet_bytes, grown


def test_two_processes_guide_different_views_and_stay_bit_identical(demo, tiny_sd, tmp_path):
    from tests.test_ddp import assert_bit_identical, dumps, run_fit

    steps = 40  # densify at steps 19, 29 and 39, opacity reset at 29
    run_fit(demo, tmp_path, "ddp", steps, 2, "--save_steps", "[]", *guided(tiny_sd, "--model.guidance.every", "2"),
            "--model.density.init_args.densify_from", "10", "--model.density.init_args.densify_every", "10",
            "--model.density.init_args.opacity_reset_every", "30", "--trainer.callbacks+=tests.sds_probe.RecordGuidance")
    r0, r1 = dumps(tmp_path / "ddp", 2)
    assert_bit_identical(r0, r1)
    assert {s["step"] for s in r0["steps"] if s["after"] != s["before"]} == {19, 29, 39}
    p0, p1 = (torch.load(tmp_path / "ddp" / "sds_probe" / f"rank{r}.pt", weights_only=False)["rows"] for r in (0, 1))
    assert [row["step"] for row in p0] == [row["step"] for row in p1] == list(range(0, steps, 2))
    # Each process guided its own view and timestep at every guided step.
    assert all(not torch.equal(a["centers"], b["centers"]) for a, b in zip(p0, p1))
    assert sum(int(a["t"][0] != b["t"][0]) for a, b in zip(p0, p1)) >= len(p0) - 1
