"""Guidance plumbing that needs no diffusion model (internal/guidance): novel-view geometry, the step
schedule and annealing, the per-step generator under several processes, the model-folder check and its
one-line errors, the CLI options, and that training never imports the optional extra."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from internal import ddp
from internal.data.cameras import Cameras
from internal.guidance import Guidance, GuidanceError, NovelViews, SDSGuidance
from internal.guidance.base import linear_schedule
from internal.guidance.diffusion import check_model_folder
from internal.guidance.views import look_at, sample_views, scene_frame

REPO = Path(__file__).resolve().parents[1]


def ring_cameras(n=12, radius=4.0, elevation_deg=30.0, center=(0.5, -0.2, 0.3), size=80, fy=70.0):
    """Cameras on a ring around `center` (z up), each looking at it."""
    c = np.asarray(center, float)
    az = np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = math.radians(elevation_deg)
    pos = c + radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(n, math.sin(el))], 1)
    R, T = look_at(pos, c, np.array([0.0, 0.0, 1.0]))
    return Cameras.from_numpy(R, T, np.full(n, fy), np.full(n, fy), np.full(n, size / 2), np.full(n, size / 2),
                              np.full(n, size), np.full(n, size))


def project(cams: Cameras, points: np.ndarray) -> np.ndarray:
    """(N,P,2) pixel coordinates of world points in each camera, and (N,P) depths."""
    R, T = cams.R.double().numpy(), cams.T.double().numpy()
    x = np.einsum("nij,pj->npi", R, points) + T[:, None]
    K = cams.Ks().double().numpy()
    uv = np.einsum("nij,npj->npi", K, x)
    return uv[..., :2] / uv[..., 2:], x[..., 2]


def test_look_at_is_an_opencv_camera_with_up_up():
    c = np.array([0.5, -0.2, 0.3])
    cams = ring_cameras(center=c)
    R = cams.R.double().numpy()
    assert np.allclose(np.einsum("nij,nkj->nik", R, R), np.eye(3), atol=1e-6)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-6)
    uv, depth = project(cams, np.stack([c, c + [0, 0, 0.5]]))
    assert np.allclose(uv[:, 0], 40.0, atol=1e-3) and (depth > 0).all()  # the centre is in the middle of the image
    assert (uv[:, 1, 1] < uv[:, 0, 1] - 1).all()  # a point above the centre is higher in the image (smaller y)


def test_scene_frame_finds_where_cameras_look():
    c = np.array([0.5, -0.2, 0.3])
    fr = scene_frame(ring_cameras(center=c))
    assert np.allclose(fr.center, c, atol=1e-5)
    assert np.allclose(fr.up, [0, 0, 1], atol=1e-6)
    assert fr.radius == pytest.approx(4.0, rel=1e-6)
    assert math.degrees(fr.fov_y) == pytest.approx(math.degrees(2 * math.atan(40 / 70)), rel=1e-6)
    # Overrides.
    fr2 = scene_frame(ring_cameras(center=c), center=(0, 0, 0), radius=2.5)
    assert np.allclose(fr2.center, 0) and fr2.radius == 2.5


def test_scene_frame_of_a_forward_facing_capture_uses_the_scene_depth():
    # Six cameras side by side, all looking down +y (OpenCV: z forward): the axes never meet.
    n = 6
    pos = np.stack([np.linspace(-1, 1, n), np.zeros(n), np.zeros(n)], 1)
    R = np.repeat(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])[None], n, 0)  # x right, y down (-z up), z = +y
    T = -np.einsum("nij,nj->ni", R, pos)
    cams = Cameras.from_numpy(R, T, [50.0] * n, [50.0] * n, [32.0] * n, [32.0] * n, [64] * n, [64] * n)
    points = np.stack([np.zeros(50), np.linspace(4, 6, 50), np.zeros(50)], 1)  # median depth 5
    fr = scene_frame(cams, points)
    assert np.allclose(fr.center, [0, 5, 0], atol=1e-6)
    assert np.allclose(fr.up, [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("mode", ["interpolate", "perturb", "orbit"])
def test_novel_views_look_at_the_centre_within_their_ranges(mode):
    c = np.array([0.5, -0.2, 0.3])
    train = ring_cameras(n=8, center=c, elevation_deg=30.0)
    fr = scene_frame(train)
    opts = NovelViews(mode=mode, radius_range=(0.8, 1.2), elevation_range=(10.0, 50.0), jitter_deg=15.0, fov_deg=60.0)
    g = torch.Generator().manual_seed(3)
    cams = sample_views(opts, fr, 64, 32, g)
    assert len(cams) == 64 and int(cams.width[0]) == int(cams.height[0]) == 32
    assert math.degrees(2 * math.atan(16 / float(cams.fy[0]))) == pytest.approx(60.0, rel=1e-5)
    uv, depth = project(cams, c[None])
    assert np.allclose(uv[:, 0], 16.0, atol=1e-3) and (depth > 0).all()
    up_uv, _ = project(cams, (c + [0, 0, 0.3])[None])
    assert (up_uv[:, 0, 1] < 16.0).all()
    rel = cams.camera_centers().double().numpy() - c
    dist = np.linalg.norm(rel, axis=1)
    elev = np.degrees(np.arcsin(rel[:, 2] / dist))
    if mode == "interpolate":  # between ring cameras: distance 4, elevation at least the ring's 30 degrees
        assert np.allclose(dist, 4.0, atol=1e-5) and (elev >= 30.0 - 1e-4).all() and elev.max() > 31.0
    elif mode == "perturb":  # around a training camera: elevation 30 +- 15, distance 4 x [0.8, 1.2]
        assert (elev >= 15 - 1e-4).all() and (elev <= 45 + 1e-4).all() and np.ptp(elev) > 15
        assert (dist >= 3.2 - 1e-5).all() and (dist <= 4.8 + 1e-5).all()
    else:  # anywhere in azimuth, elevation in the range
        assert (elev >= 10 - 1e-4).all() and (elev <= 50 + 1e-4).all()
        azim = np.degrees(np.arctan2(rel[:, 1], rel[:, 0]))
        assert np.ptp(azim) > 300
    # The same generator state gives the same views; another gives others.
    again = sample_views(opts, fr, 64, 32, torch.Generator().manual_seed(3))
    assert torch.equal(again.R, cams.R) and torch.equal(again.T, cams.T)
    other = sample_views(opts, fr, 64, 32, torch.Generator().manual_seed(4))
    assert not torch.equal(other.T, cams.T)


def test_interpolating_a_camera_with_itself_gives_that_camera():
    train = ring_cameras(n=1)
    fr = scene_frame(ring_cameras(n=12))  # the frame of a full ring (one camera has no centre of its own)
    fr.positions = train.camera_centers().double().numpy()
    cams = sample_views(NovelViews(mode="interpolate"), fr, 4, 80, torch.Generator().manual_seed(0))
    for k in range(4):
        torch.testing.assert_close(cams.R[k], train.R[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(cams.T[k], train.T[0], atol=1e-5, rtol=0)


class Scheduled(Guidance):
    def __call__(self, *args):
        return None


def test_schedule_and_annealing():
    g = Scheduled(every=3, start_step=10, end_step=20)
    assert [s for s in range(30) if g.due(s)] == [10, 13, 16, 19]
    assert [s for s in range(8) if Scheduled().due(s)] == list(range(8))
    assert linear_schedule(1.0, 3.0, 5, 0, 10) == pytest.approx(2.0)
    assert linear_schedule(1.0, 3.0, -5, 0, 10) == 1.0 and linear_schedule(1.0, 3.0, 50, 0, 10) == 3.0
    assert linear_schedule(1.0, None, 5, 0, 10) == 1.0
    g.max_steps = 1000  # end_step wins over the trainer's max_steps
    assert g.annealed(0.98, 0.5, 15) == pytest.approx(0.74)
    open_ended = Scheduled(start_step=100)
    open_ended.max_steps = 300
    assert open_ended.annealed(1.0, 0.0, 200) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="every"):
        Scheduled(every=0)
    with pytest.raises(ValueError, match="start_step"):
        Scheduled(start_step=10, end_step=10)


def test_step_generator_keeps_the_shared_stream_identical_across_ranks(monkeypatch):
    """Each rank draws from its own per-step generator, but the shared one advances the same on all."""
    draws, states = {}, {}
    for r in (0, 1):
        monkeypatch.setattr(ddp, "rank", lambda r=r: r)
        shared = torch.Generator().manual_seed(7)
        g = Guidance.step_generator(shared)
        draws[r] = torch.rand(4, generator=g)
        states[r] = shared.get_state()
    assert torch.equal(states[0], states[1])
    assert not torch.equal(draws[0], draws[1])
    monkeypatch.setattr(ddp, "rank", lambda: 0)
    again = Guidance.step_generator(torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(4, generator=again), draws[0])


# ---------------------------------------------------------------------------- the model folder

def fake_sd_folder(root: Path, **drop) -> Path:
    """The file layout of a diffusers SD folder (empty weight files): enough for the folder check."""
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
             "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"]
    for f in files:
        if f in drop.get("without", ()):
            continue
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], **drop.get("index", {})}
    if "model_index.json" not in drop.get("without", ()):
        (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_model_folder_check_names_what_is_missing(tmp_path):
    assert check_model_folder(fake_sd_folder(tmp_path / "ok")) == {"unet": "", "vae": "", "text_encoder": ""}
    with pytest.raises(GuidanceError) as e:
        check_model_folder(tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "does not exist" in msg
    assert "model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/" in msg and "model_path" in msg
    partial = fake_sd_folder(tmp_path / "partial", without=("unet/diffusion_pytorch_model.safetensors",
                                                            "tokenizer/merges.txt", "scheduler/scheduler_config.json"))
    with pytest.raises(GuidanceError) as e:
        check_model_folder(partial)
    msg = str(e.value)
    assert "\n" not in msg and "incomplete" in msg and str(partial) in msg
    for missing in ("unet/diffusion_pytorch_model.safetensors (or .bin)", "tokenizer/vocab.json + merges.txt",
                    "scheduler/scheduler_config.json"):
        assert missing in msg
    assert "vae/" not in msg.split("must")[0]  # what is there is not reported missing
    with pytest.raises(GuidanceError, match="missing model_index.json"):
        check_model_folder(fake_sd_folder(tmp_path / "noindex", without=("model_index.json",)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(GuidanceError, match="is not a folder"):
        check_model_folder(tmp_path / "file")
    # fp16-only weights (a "variant" download) are found and loaded as that variant.
    fp16 = fake_sd_folder(tmp_path / "fp16", without=("unet/diffusion_pytorch_model.safetensors",))
    (fp16 / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_text("{}")
    assert check_model_folder(fp16)["unet"] == "fp16"
    # SDXL and other pipelines are named as unsupported.
    with pytest.raises(GuidanceError, match="Stable Diffusion XL"):
        check_model_folder(fake_sd_folder(tmp_path / "xl", index={"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    with pytest.raises(GuidanceError, match="names UNet2DModel for unet"):
        check_model_folder(fake_sd_folder(tmp_path / "uncond", index={"unet": ["diffusers", "UNet2DModel"]}))


def test_missing_extra_is_one_line_naming_the_requirements(tmp_path, monkeypatch):
    from internal.guidance.diffusion import load_stable_diffusion

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError, as when not installed
    with pytest.raises(GuidanceError) as e:
        load_stable_diffusion(fake_sd_folder(tmp_path / "sd"), torch.device("cpu"), torch.float32)
    assert "\n" not in str(e.value) and "requirements-sds.txt" in str(e.value)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        SDSGuidance("x", "p", resolution=60)
    with pytest.raises(ValueError, match="t_range"):
        SDSGuidance("x", "p", t_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="elevation_range"):
        SDSGuidance("x", "p", views=NovelViews(elevation_range=(-100.0, 10.0)))
    with pytest.raises(ValueError, match="radius_range"):
        SDSGuidance("x", "p", views=NovelViews(radius_range=(0.0, 1.0)))


def test_cli_option_builds_the_guidance_and_a_missing_folder_ends_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    from internal.cli import GSCLI, main
    from internal.demo_scene import generate_demo_scene

    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.chdir(REPO)
    generate_demo_scene(tmp_path / "demo", width=32, height=32, n_views=8, ss=1, n_points=200, formats=("blender",))
    data = str(tmp_path / "demo" / "blender")
    cli = GSCLI(args=["--data.path", data, "--output", str(tmp_path), "-n", "parse", "--model.guidance", "SDSGuidance",
                      "--model.guidance.model_path", str(tmp_path / "sd"), "--model.guidance.prompt", "a lego",
                      "--model.guidance.views.mode", "orbit", "--model.guidance.every", "4"], run=False)
    g = cli.model.guidance
    assert isinstance(g, SDSGuidance) and g.prompt == "a lego" and g.views.mode == "orbit" and g.every == 4
    assert "guidance" not in cli.model.hparams  # the object (and any model it loads) stays out of checkpoints
    cli = GSCLI(args=["--config", "configs/sds.yaml", "--data.path", data, "--output", str(tmp_path), "-n", "cfg",
                      "--model.guidance.init_args.model_path", str(tmp_path / "sd")], run=False)
    assert isinstance(cli.model.guidance, SDSGuidance) and cli.model.guidance.t_range_final == (0.02, 0.5)
    # fit with a folder that is not there: one line, exit status 1, before any training step.
    with pytest.raises(SystemExit) as e:
        main(["fit", "--data.path", data, "--output", str(tmp_path), "-n", "missing", "--trainer.max_steps", "2",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--model.guidance", "SDSGuidance", "--model.guidance.model_path", str(tmp_path / "no_such_sd"),
              "--model.guidance.prompt", "x"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: SDS model folder {tmp_path / 'no_such_sd'} does not exist"), err[-3:]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "missing" / "checkpoints").exists()


def test_training_code_does_not_import_the_optional_extra():
    code = ("import sys; import internal.module, internal.cli, internal.guidance; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"

