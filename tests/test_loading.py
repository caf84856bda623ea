"""internal/loading.py: what a user points at -> a LoadedModel, and render_view (the one render path of the tools)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

import internal as gs
from conftest import shared_path
from internal.loading import (
    LoadedModel, ModelLoadError, camera_entry_c2w, default_view, intrinsics, load_model, render_view, resolve_model_path,
)
from internal.renderers import VanillaRenderer
from viewer_helpers import tiny_run_fixture, with_groups

STEPS = 60  # viewer_helpers.tiny_run_fixture's default: one training serves every viewer test module


run = tiny_run_fixture(steps=STEPS)


def test_output_folder_loads_its_checkpoint(run):
    assert resolve_model_path(run) == run / "checkpoints" / f"step={STEPS}.ckpt"
    model = load_model(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert model.step == STEPS
    assert model.background == (1.0, 1.0, 1.0)  # Blender scene: white
    torch.testing.assert_close(model.splats.means, state["gaussians.means"])
    torch.testing.assert_close(model.splats.opacities, state["gaussians.opacities"])
    # Only the SH bands training had switched on (degree 0 before step 1000).
    assert int(state["gaussians.active_sh_degree"]) == 0 and model.splats.sh_degree == 0
    assert isinstance(model.renderer, VanillaRenderer) and model.appearance_groups == []
    written = json.loads((run / "cameras.json").read_text())
    assert model.cameras == written and len(written) >= 8
    assert {"position", "rotation", "fx", "fy", "width", "height"} <= set(model.cameras[0])


def test_render_view_is_what_training_rendered(run):
    """render_view at a training camera equals the module's own renderer on the same Gaussians."""
    from internal.data.cameras import Cameras
    from internal.gaussians import GaussianModel

    model = load_model(run / "checkpoints" / "last.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    g = GaussianModel(1)
    g.load_state_dict({k[len("gaussians."):]: v for k, v in state.items() if k.startswith("gaussians.")})
    e = model.cameras[2]
    w2c = np.linalg.inv(camera_entry_c2w(e))
    W, H = e["width"], e["height"]
    K = np.array([[e["fx"], 0, W / 2], [0, e["fy"], H / 2], [0, 0, 1]])
    cams = Cameras.from_numpy(w2c[:3, :3], w2c[:3, 3], e["fx"], e["fy"], W / 2, H / 2, [W], [H])
    bg = torch.tensor(model.background)
    with torch.no_grad():
        ref = VanillaRenderer()(g, cams, bg)
    out = render_view(model, w2c, K, W, H)
    torch.testing.assert_close(out.colors, ref.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alphas, ref.alphas, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depths, ref.depths, atol=1e-4, rtol=0)
    assert out.alphas.mean() > 0.05  # the view sees the content
    # ... and equals the public draw() API (uint8) with the same background.
    img = gs.draw(model.splats, w2c, K, W, H, background=model.background, device="cpu")[0]
    expect = (torch.cat([out.colors[0], out.alphas[0]], -1).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    assert (img.int() - expect.int()).abs().max() <= 1


def test_render_view_options(run):
    model = load_model(run)
    c2w, fov = default_view(model)
    w2c = np.linalg.inv(c2w)
    K = intrinsics(fov, 48, 40)
    base = render_view(model, w2c, K, 48, 40)
    assert base.colors.shape == (1, 40, 48, 3) and base.depths.shape == (1, 40, 48, 1)
    # scaling_modifier multiplies the activated scales: the same as log-scales shifted by log(m).
    half = render_view(model, w2c, K, 48, 40, scaling_modifier=0.5)
    shifted = LoadedModel(**{**model.__dict__, "_cache": {}})
    shifted.splats = gs.Splats(**{**model.splats.__dict__, "scales": model.splats.scales + math.log(0.5)})
    torch.testing.assert_close(half.colors, render_view(shifted, w2c, K, 48, 40).colors, atol=1e-5, rtol=0)
    assert (half.alphas.sum() < base.alphas.sum()).item()
    # background: a black one darkens exactly the uncovered part.
    black = render_view(model, w2c, K, 48, 40, background=(0, 0, 0))
    torch.testing.assert_close(black.colors + (1 - black.alphas), base.colors, atol=1e-5, rtol=0)
    # far clips everything behind it.
    near_only = render_view(model, w2c, K, 48, 40, far=float(base.depths[base.alphas > 0.5].min()) * 0.5)
    assert near_only.alphas.max() < 1e-6
    # The activation cache notices in-place changes (as a live training run makes them).
    with torch.no_grad():
        model.splats.opacities.fill_(-20.0)
    assert render_view(model, w2c, K, 48, 40).alphas.max() < 0.01


def test_render_view_errors(run):
    model = load_model(run)
    K = intrinsics(1.0, 16, 16)
    with pytest.raises(ValueError, match="sh_degree=2, but this model carries SH degree 0..0"):
        render_view(model, np.eye(4), K, 16, 16, sh_degree=2)
    with pytest.raises(ValueError, match="appearance_group='day'.*no appearance groups"):
        render_view(model, np.eye(4), K, 16, 16, appearance_group="day")
    with pytest.raises(ValueError, match="scaling_modifier"):
        render_view(model, np.eye(4), K, 16, 16, scaling_modifier=0)
    with pytest.raises(ValueError, match="finite"):
        render_view(model, np.full((4, 4), np.nan), K, 16, 16)


def test_appearance_group_goes_through_the_renderer(run):
    model = with_groups(load_model(run))
    c2w, fov = default_view(model)
    w2c, K = np.linalg.inv(c2w), intrinsics(fov, 32, 32)
    plain = render_view(model, w2c, K, 32, 32)
    evening = render_view(model, w2c, K, 32, 32, appearance_group="evening")
    assert model.renderer.seen == 1
    torch.testing.assert_close(evening.colors, plain.colors * 0.5, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not one of this model's groups: morning, evening"):
        render_view(model, w2c, K, 32, 32, appearance_group="noon")


def test_resolve_model_path_rules(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for step in (10, 30):
        torch.save({"global_step": step}, out / "checkpoints" / f"step={step}.ckpt")
    torch.save({"global_step": 40}, out / "checkpoints" / "last.ckpt")
    assert resolve_model_path(out) == out / "checkpoints" / "last.ckpt"  # by the step it holds
    torch.save({"global_step": 20}, out / "checkpoints" / "last.ckpt")
    assert resolve_model_path(out) == out / "checkpoints" / "step=30.ckpt"
    shutil.rmtree(out / "checkpoints")
    for it in (7000, 30000, 500):
        p = out / "point_cloud" / f"iteration_{it}" / "point_cloud.ply"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"ply\n")
    assert resolve_model_path(out) == out / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    assert resolve_model_path(out / "point_cloud" / "iteration_500" / "point_cloud.ply").name == "point_cloud.ply"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "neither a checkpoint"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "a folder without checkpoints"),
])
def test_resolve_errors(tmp_path, make, message):
    target = make(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path(target)
    assert str(target) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def _ran():
    _CallsCode.ran = True


class _CallsCode:
    ran = False

    def __reduce__(self):
        return (_ran, ())


def test_bad_checkpoints_give_one_line_errors(run, tmp_path):
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint.*pass another checkpoint training wrote") as err:
        load_model(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, other)
    with pytest.raises(ModelLoadError, match="not one of this trainer"):
        load_model(other)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        load_model(text)
    nan = tmp_path / "nan.ckpt"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"]["gaussians.means"][3, 1] = float("nan")
    torch.save(ckpt, nan)
    with pytest.raises(ModelLoadError, match="non-finite values .* in gaussians.means"):
        load_model(nan)
    # Tools open files from anywhere: a pickle that would call code is refused, and the code never runs.
    ckpt["state_dict"]["gaussians.means"][3, 1] = 0.0
    ckpt["extra"] = _CallsCode()
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    _CallsCode.ran = False
    with pytest.raises(ModelLoadError, match=r"evil.ckpt: refers to Python code \(.*_ran\).*not loaded"):
        load_model(evil)
    assert not _CallsCode.ran
    bad_ply = tmp_path / "points.ply"
    bad_ply.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n" + bytes(4))
    with pytest.raises(ModelLoadError, match="missing field"):
        load_model(bad_ply)


def test_exported_ply_in_an_output_folder(run):
    ply = run / "point_cloud" / f"iteration_{STEPS}" / "point_cloud.ply"
    model = load_model(ply)
    assert model.step == STEPS and model.renderer is None and model.appearance_groups == []
    assert model.cameras is not None and model.background == (1.0, 1.0, 1.0)
    ckpt = load_model(run)
    torch.testing.assert_close(model.splats.means, ckpt.splats.means)


def test_a_ply_from_elsewhere_opens_looking_at_its_content():
    model = load_model(shared_path("gaussians_ply", "gshairlod_donut_iter30000_fused_sh0.ply"))
    assert model.cameras is None and model.step is None and model.background == (0, 0, 0)
    c2w, fov = default_view(model)
    out = render_view(model, np.linalg.inv(c2w), intrinsics(fov, 96, 64), 96, 64)
    covered = out.alphas[0, ..., 0] > 0.5
    assert covered.float().mean() > 0.1
    # the content sits in the middle of the frame, not at an edge
    ys, xs = torch.nonzero(covered, as_tuple=True)
    assert 20 < xs.float().mean() < 76 and 12 < ys.float().mean() < 52


def test_visibility_order_and_prefix_rendering(run):
    from internal.loading import sort_by_visibility, visibility_score

    model = load_model(run)
    model.extras = {"row": torch.arange(model.num_gaussians, dtype=torch.float32)[:, None]}  # per-Gaussian extras
    ordered = sort_by_visibility(model)
    _, _, scales, opac, _ = gs.Splats.activated(ordered.splats)
    score = visibility_score(opac, scales)
    assert (score[:-1] >= score[1:]).all()  # most visible first
    # Extra per-Gaussian parameters follow their Gaussians.
    rows = ordered.extras["row"][:, 0].long()
    torch.testing.assert_close(ordered.splats.means, model.splats.means[rows])
    c2w, fov = default_view(model)
    w2c, K = np.linalg.inv(c2w), intrinsics(fov, 48, 40)
    # The same picture in another order (the rasterizer sorts by depth).
    torch.testing.assert_close(render_view(ordered, w2c, K, 48, 40).colors, render_view(model, w2c, K, 48, 40).colors,
                               atol=1e-5, rtol=0)
    # max_gaussians draws exactly the prefix.
    k = model.num_gaussians // 4
    prefix = LoadedModel(**{**ordered.__dict__, "_cache": {}})
    prefix.splats = gs.Splats(**{f: getattr(ordered.splats, f)[:k] for f in ("means", "quats", "scales", "opacities", "sh0", "shN")})
    part = render_view(ordered, w2c, K, 48, 40, max_gaussians=k)
    torch.testing.assert_close(part.colors, render_view(prefix, w2c, K, 48, 40).colors, atol=1e-6, rtol=0)
    assert (part.radii > 0).sum() <= k


def test_look_at_is_upright():
    from internal.loading import look_at

    rng = np.random.default_rng(0)
    for _ in range(20):
        eye, target, up = rng.normal(size=3) * 3, rng.normal(size=3), rng.normal(size=3)
        up /= np.linalg.norm(up)
        c2w = look_at(eye, target, up)
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) > 0
        w2c = np.linalg.inv(c2w)
        K = intrinsics(1.0, 100, 100)
        def pix(p):
            q = w2c[:3, :3] @ p + w2c[:3, 3]
            return (K @ q)[:2] / q[2]
        u0, v0 = pix(target)
        assert abs(u0 - 50) < 1e-6 and abs(v0 - 50) < 1e-6  # the target is in the centre
        side = np.cross(target - eye, up)
        if np.linalg.norm(side) > 1e-3:
            assert pix(target + 0.1 * up)[1] < 50  # what is up is drawn higher (smaller row)
            assert pix(target + 0.1 * side / np.linalg.norm(side))[0] > 50  # forward x up is to the right
