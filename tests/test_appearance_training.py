"""The appearance model through the CLI on the demo scene: a fit with two artificially varied groups
against plain 3DGS, PLY exports per group, resume exactness, the NeRF-W protocol in `test`, and two
processes staying bit-identical."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import internal as gs
from internal.cli import GSCLI
from internal.data.variation import make_varied_blender_scene
from internal.demo_scene import generate_demo_scene
from internal.renderers import AppearanceMLPRenderer
from tests.test_training import STEPS_PER_EPOCH, _state, fit, make_cli, plain_argv  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]
APPEARANCE = ["--model.renderer", "AppearanceMLPRenderer"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_app")
    generate_demo_scene(root, width=96, height=96, n_views=24, ss=1, n_points=1500, formats=("blender",))
    return root


@pytest.fixture(scope="module")
def varied(demo, tmp_path_factory):
    """The demo scene with two looks (views alternate between them; val/test views too)."""
    dst = tmp_path_factory.mktemp("varied") / "scene"
    looks = make_varied_blender_scene(demo / "blender", dst, num_groups=2, seed=0)
    assert looks[0] != looks[1]
    return dst


def read_rows(path):
    rows = list(csv.DictReader(open(path)))
    assert rows[-1]["image"] == "MEAN"
    return rows[:-1]


def look_metrics(render_dir: Path) -> dict[str, tuple[float, float]]:
    """Per validation image: (PSNR, PSNR of 8x8 block means). The block means keep the look (colour,
    tone, exposure) and drop the detail that a short fit of the demo scene cannot have yet."""
    import numpy as np
    from PIL import Image

    out = {}
    for r in sorted(render_dir.glob("*_render.png")):
        a = np.asarray(Image.open(r), dtype=np.float64) / 255.0
        b = np.asarray(Image.open(str(r).replace("_render", "_gt")), dtype=np.float64) / 255.0
        h, w = a.shape[0] // 8, a.shape[1] // 8
        block = lambda x: x[: 8 * h, : 8 * w].reshape(h, 8, w, 8, 3).mean((1, 3))  # noqa: E731
        psnr = lambda x, y: float(-10 * np.log10(((x - y) ** 2).mean()))  # noqa: E731
        out[r.name.split("_", 1)[1].replace("_render.png", "")] = (psnr(a, b), psnr(block(a), block(b)))
    return out


STEPS = 600
SCHEDULE = ["--model.density.init_args.densify_from", "100", "--model.density.init_args.densify_every", "100",
            "--model.density.init_args.densify_until", "450", "--model.density.init_args.opacity_reset_every", "1000",
            "--model.optimization.means_lr_max_steps", str(STEPS)]


@pytest.fixture(scope="module")
def fits(varied, tmp_path_factory):
    """Plain and appearance fits of the varied demo scene, same steps and schedule."""
    out = tmp_path_factory.mktemp("fits")
    runs = {}
    for name, extra in (("plain", []), ("appearance", APPEARANCE + ["--model.renderer.init_args.warm_up", "100"])):
        cli = make_cli(varied.parent, out, name, STEPS, "--data.path", str(varied),
                       "--data.params.blender.appearance_groups", "appearance_groups", *SCHEDULE, *extra)
        fit(cli)
        runs[name] = (cli, out / name)
    return runs


def test_appearance_recovers_each_groups_look_better_than_plain(fits, varied):
    import json

    plain = look_metrics(fits["plain"][1] / "renders" / f"val-step={STEPS}")
    app = look_metrics(fits["appearance"][1] / "renders" / f"val-step={STEPS}")
    groups = json.loads((varied / "appearance_groups.json").read_text())
    group_of = {Path(n).stem: g for g, names in groups.items() for n in names if n.startswith("test/")}
    assert sorted(set(group_of[k] for k in app)) == ["look_0", "look_1"]  # both looks are validated
    # Bars (96 px, 600 steps, warm-up 100, two looks). Measured: PSNR of 8x8 block means plain 22.6 / 25.3
    # / 23.0 dB, appearance 27.3 / 29.7 / 28.8 (+4.4 to +5.8); full PSNR plain 16.6 / 16.7 / 16.5,
    # appearance 17.9 / 17.9 / 17.9 (+1.2 to +1.5). A single view's full PSNR at 600 steps moves by ~0.3 dB
    # with float rounding alone (fused native loss vs torch loss, equal to 6e-7: r_0 appearance 16.98 vs
    # 17.26 dB, means 17.52 vs 17.57), so the full-PSNR bar is on the mean over the views; the look, the
    # claim of this test, keeps a per-view bar. The look moves with rounding too: passing the rasterizer the raw
    # quaternions instead of pre-normalised ones (the same rotation and gradient, other roundings; issue 15)
    # moved the look margins from +3.8 / +5.1 / +7.0 dB to +2.8 / +3.6 / +7.0. Bars: every view's look 2 dB
    # closer than plain's and the mean 3 dB closer; every view better than plain in full PSNR, the mean 0.5 dB.
    for k in app:
        assert app[k][1] > plain[k][1] + 2.0, (k, group_of[k], app[k], plain[k])
        assert app[k][0] > plain[k][0], (k, group_of[k], app[k], plain[k])
    mean = lambda m, i=0: sum(v[i] for v in m.values()) / len(m)  # noqa: E731
    assert mean(app, 1) > mean(plain, 1) + 3.0, (app, plain)
    assert mean(app) > mean(plain) + 0.5, (app, plain)
    rows = read_rows(fits["appearance"][1] / "metrics" / f"val-step={STEPS}.csv")
    assert [r["protocol"] for r in rows] == ["own_group"] * 3
    assert "protocol" not in read_rows(fits["plain"][1] / "metrics" / f"val-step={STEPS}.csv")[0]


def test_the_exported_ply_carries_a_group_and_reloads(fits, tmp_path):
    cli, exp = fits["appearance"]
    renderer, model = cli.model.renderer, cli.model.gaussians
    assert isinstance(renderer, AppearanceMLPRenderer) and renderer.group_names == ["look_0", "look_1"]
    ply = gs.load_from_ply(exp / "point_cloud" / f"iteration_{STEPS}" / "point_cloud.ply")
    first = renderer.export_splats(model)  # the default: the first group
    assert len(ply) == model.num_gaussians
    torch.testing.assert_close(ply.sh0, first.sh0)
    torch.testing.assert_close(ply.shN, first.shN)
    torch.testing.assert_close(ply.means, model.means.detach())
    assert not torch.allclose(ply.sh0, model.sh0.detach().cpu())  # the look was baked in
    # The checkpoint alone knows its groups and renders a chosen one.
    ckpt = torch.load(exp / "checkpoints" / f"step={STEPS}.ckpt", weights_only=False)
    assert ckpt["gs_renderer"]["class_path"] == "internal.renderers.appearance.AppearanceMLPRenderer"
    rebuilt = AppearanceMLPRenderer(**ckpt["gs_renderer"]["init_args"])
    from internal.gaussians import GaussianModel

    g = GaussianModel(model.sh_degree)
    rebuilt.setup(g)
    g.load_state_dict({k[10:]: v for k, v in ckpt["state_dict"].items() if k.startswith("gaussians.")})
    rebuilt.load_state_dict({k[9:]: v for k, v in ckpt["state_dict"].items() if k.startswith("renderer.")})
    assert rebuilt.group_names == ["look_0", "look_1"]
    torch.testing.assert_close(rebuilt.export_splats(g, "look_1").sh0, renderer.export_splats(model, "look_1").sh0)


def test_loaded_checkpoints_render_a_chosen_group(fits):
    """internal/loading.py (the tools' one render path): an appearance run loads with its groups,
    render_view(appearance_group=NAME) is the training renderer's image of that group, no group means
    the first (as PLY exports), and splats_for_group bakes the group as the export does."""
    import numpy as np

    from internal.data.cameras import Cameras
    from internal.loading import camera_entry_c2w, load_model, render_view

    cli, exp = fits["appearance"]
    renderer, gaussians = cli.model.renderer.eval(), cli.model.gaussians
    model = load_model(exp)
    assert model.appearance_groups == ["look_0", "look_1"] and isinstance(model.renderer, AppearanceMLPRenderer)
    assert set(model.extras) == {"appearance_features"}
    e = model.cameras[1]
    w2c = np.linalg.inv(camera_entry_c2w(e))
    W, H = e["width"], e["height"]
    K = np.array([[e["fx"], 0, W / 2], [0, e["fy"], H / 2], [0, 0, 1]])
    bg = torch.tensor(model.background)
    renders = {}
    for gid, name in enumerate(model.appearance_groups):
        cams = Cameras.from_numpy(w2c[:3, :3], w2c[:3, 3], e["fx"], e["fy"], W / 2, H / 2, [W], [H], appearance_id=[gid])
        with torch.no_grad():
            ref = renderer(gaussians, cams, bg)
        renders[name] = render_view(model, w2c, K, W, H, appearance_group=name)
        torch.testing.assert_close(renders[name].colors, ref.colors, atol=1e-5, rtol=0)
        assert renders[name].alphas.mean() > 0.05
    # The looks differ (3 dB in this scene), and no group means the first one.
    gap = (renders["look_0"].colors - renders["look_1"].colors).abs().mean()
    assert gap > 0.02, gap
    torch.testing.assert_close(render_view(model, w2c, K, W, H).colors, renders["look_0"].colors, atol=0, rtol=0)
    # Baked splats rendered plainly: the export's SH, and the same image wherever SH + 0.5 >= 0.
    baked = model.splats_for_group("look_1")
    torch.testing.assert_close(baked.sh0, renderer.export_splats(gaussians, "look_1").sh0)
    plain = render_view(type(model)(**{**model.__dict__, "splats": baked, "renderer": None, "appearance_groups": [],
                                       "extras": {}, "_cache": {}}), w2c, K, W, H)
    assert (plain.colors - renders["look_1"].colors).abs().mean() < 2e-3
    with pytest.raises(ValueError, match="'noon' is not one of this model's groups: look_0, look_1"):
        render_view(model, w2c, K, W, H, appearance_group="noon")
    with pytest.raises(ValueError, match="'noon' is not one of this model's groups"):
        model.splats_for_group("noon")
    # A copy of the model that dropped the features is refused by name, not with an AttributeError.
    with pytest.raises(ValueError, match="lacks the per-Gaussian 'appearance_features'"):
        render_view(type(model)(**{**model.__dict__, "extras": {}, "_cache": {}}), w2c, K, W, H, appearance_group="look_0")


def test_render_py_and_the_viewer_draw_the_chosen_group(fits, tmp_path):
    """render.py --appearance_group and the viewer's group setting go through render_view: their frames
    are the group's render (the viewer's level-of-detail order too), and a wrong group is one line."""
    import subprocess
    import sys

    import numpy as np

    from internal.loading import load_model, render_view, sort_by_visibility
    from internal.render_video import VideoOptions, render_frames
    from internal.viewer.frames import CameraState, DisplaySettings, render_frame

    exp = fits["appearance"][1]
    model = load_model(exp)
    e = model.cameras[1]
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = np.asarray(e["rotation"]), np.asarray(e["position"])
    fov = 2.0 * np.arctan(0.5 * e["height"] / e["fy"])
    W = H = 48

    def expect(group):
        from internal.loading import intrinsics

        out = render_view(model, np.linalg.inv(c2w), intrinsics(fov, W, H), W, H, appearance_group=group)
        return (out.colors[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()

    looks = {g: expect(g) for g in model.appearance_groups}
    assert np.abs(looks["look_0"].astype(int) - looks["look_1"]).mean() > 3  # the two looks differ
    for g in model.appearance_groups:
        frame = next(render_frames(model, c2w[None], np.array([fov]), W, H, VideoOptions(appearance_group=g)))
        assert np.abs(frame.astype(int) - looks[g]).max() <= 1, g
        sorted_model = sort_by_visibility(model)  # the viewer draws a visibility-ordered copy
        shown = render_frame(sorted_model, CameraState(c2w=c2w, fov_y=fov, width=W, height=H), DisplaySettings(appearance_group=g), W, H)
        assert np.abs(shown.astype(int) - looks[g]).max() <= 1, g
        fewer = render_frame(sorted_model, CameraState(c2w=c2w, fov_y=fov, width=W, height=H), DisplaySettings(appearance_group=g), W, H,
                             fraction=0.5)  # a prefix of the Gaussians takes the prefix of their features
        assert fewer.shape == shown.shape
    r = subprocess.run([sys.executable, str(REPO / "render.py"), str(exp), "--traj", "ellipse", "--frames", "2",
                        "--resolution", "32x32", "--appearance_group", "noon", "-o", str(tmp_path / "x.mp4")],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 1 and "--appearance_group" in r.stderr and "look_0, look_1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_export_group_is_refused_before_training(varied, tmp_path, capsys):
    from internal.cli import main

    common = ["fit", "--config", str(REPO / "configs/blender.yaml"), "--data.path", str(varied), "-n", "x",
              "--output", str(tmp_path), "--trainer.max_steps", "1", "--data.params.blender.appearance_groups", "appearance_groups"]
    with pytest.raises(SystemExit, match="--appearance_group 'noon' is not an appearance group of this run \\(look_0, look_1\\)"):
        main(common + APPEARANCE + ["--appearance_group", "noon"])
    with pytest.raises(SystemExit, match="its renderer has none"):
        main(common + ["--appearance_group", "look_0"])


def test_resume_is_exact_with_the_appearance_model(varied, tmp_path):
    # As test_training's resume test: stop at an epoch boundary, after the warm-up, densification and an
    # opacity reset; the renderer's parameters, the features and all their Adam moments must match.
    a, b = 2 * STEPS_PER_EPOCH * 2, 5 * STEPS_PER_EPOCH  # 84, 105
    extra = ["--data.path", str(varied), "--data.params.blender.appearance_groups", "appearance_groups",
             *APPEARANCE, "--model.renderer.init_args.warm_up", "40", "--checkpoint_every", str(a)]
    straight = make_cli(varied.parent, tmp_path, "straight", b, *extra)
    fit(straight)
    first = make_cli(varied.parent, tmp_path, "resumed", a, *extra)
    fit(first)
    second = make_cli(varied.parent, tmp_path, "resumed", b, *extra)
    fit(second, ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    s1, s2 = _state(straight.model), _state(second.model)
    assert s1.keys() == s2.keys() and "gaussians.appearance_features" in s1 and "renderer.embeddings" in s1
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=0, msg=k)
    assert s1["renderer.mlp.4.weight"].abs().sum() > 0  # the output layer (zero at the start) did train
    o1, o2 = straight.trainer.optimizers[0].state_dict(), second.trainer.optimizers[0].state_dict()
    assert len(o1["state"]) == 14  # 6 + features, the embeddings, the MLP's 3 weights and 3 biases
    for pid, st in o1["state"].items():
        for name, t in st.items():
            torch.testing.assert_close(o2["state"][pid][name], t, rtol=0, atol=0)
    assert [g["lr"] for g in o1["param_groups"]] == [g["lr"] for g in o2["param_groups"]]


def test_unseen_groups_are_scored_with_the_nerfw_protocol(demo, tmp_path):
    """One group per image: validation/test images have groups no training image has. `test` fits each
    one's embedding on the left half and scores the right half, and the CSV says so."""
    import json

    from internal.cli import GSCLI

    scene = demo / "blender"
    names = json.loads((scene / "transforms_train.json").read_text())
    from internal.data.groups import make_groups, write_groups

    write_groups(scene / "per_image.json", make_groups(scene, "image"), overwrite=True)
    steps = 60
    cli = make_cli(demo, tmp_path, "nerfw", steps, "--data.params.blender.appearance_groups", "per_image",
                   *APPEARANCE, "--model.renderer.init_args.warm_up", "20",
                   "--model.renderer.init_args.eval_embedding_steps", "8")
    fit(cli)
    assert len(names["frames"]) == 21 and len(cli.model.renderer.trained_groups) == 21
    GSCLI(args=["test", "--config", str(tmp_path / "nerfw" / "config.yaml"), "--ckpt_path", "last",
                "--trainer.enable_progress_bar", "false"])
    rows = read_rows(tmp_path / "nerfw" / "metrics" / f"test-step={steps}.csv")
    assert [r["protocol"] for r in rows] == ["nerfw_right_half"] * 3
    assert all(float(r["psnr"]) > 8 for r in rows)


def test_two_processes_stay_bit_identical_with_the_appearance_model(varied, tmp_path):
    """2 gloo processes (as tests/test_ddp.py): the features, embeddings and MLP ride the gradient
    all-reduce and the consistency checks (after the densification at step 59 too)."""
    from tests.test_ddp import assert_bit_identical, dumps, run_fit

    steps = 70
    run_fit(varied, tmp_path, "two", steps, 2, "--save_steps", "[]", "--data.params.blender.appearance_groups",
            "appearance_groups", *APPEARANCE, "--model.renderer.init_args.warm_up", "20")
    r0, r1 = dumps(tmp_path / "two", 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert_bit_identical(r0, r1, n_states=14)
    assert {s["step"] for s in r0["steps"] if s["after"] != s["before"]} == {59}  # densified, features too
    sd = r0["state_dict"]
    assert sd["gaussians.appearance_features"].shape[0] == sd["gaussians.means"].shape[0] == r0["steps"][-1]["after"]
    assert sd["renderer.mlp.4.weight"].abs().sum() > 0
    # Adam of the renderer's groups follows the 2-image steps too (lr x sqrt 2 on the scheduled rate).
    groups = {g["name"]: g for g in r0["optimizer"]["param_groups"]}
    assert groups["appearance_mlp"]["images_per_step"] == 2
    assert groups["appearance_mlp"]["eps"] == pytest.approx(1e-15 / 2 ** 0.5, rel=1e-12)
