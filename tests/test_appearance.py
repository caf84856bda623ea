"""AppearanceMLPRenderer and extra per-Gaussian parameters: densification/optimizer surgery of the
features, a start that is exactly plain 3DGS, gradients, group selection, the PLY bake, the NeRF-W
evaluation protocol, checkpoints by name."""

from __future__ import annotations

import math

import pytest
import torch

from internal.data.cameras import Cameras
from internal.density import DensityController
from internal.gaussians import GaussianModel
from internal.optim import check_optimizer_matches, create_optimizer
from internal.rasterize.projection import SH_C0
from internal.renderers import AppearanceMLPRenderer, VanillaRenderer
from internal.renderers.appearance import FEATURES, PROTOCOL_NERFW, PROTOCOL_OWN_GROUP
from tests.test_density import EXTENT, expected_outcome, feed, scenario, synthetic_model


def add_ids(model: GaussianModel, dim: int = 3) -> None:
    """An extra per-Gaussian parameter whose first column numbers the rows (0..N-1)."""
    model.add_parameter("feat", (dim,), lambda n: torch.cat([torch.arange(n, dtype=torch.float32)[:, None], torch.randn(n, dim - 1)], 1))


def warm(model: GaussianModel, steps: int = 3) -> torch.optim.Adam:
    opt = create_optimizer(model, {name: 1e-3 for name in model.param_names})
    g = torch.Generator().manual_seed(1)
    weights = {n: torch.randn(getattr(model, n).shape, generator=g) for n in model.param_names}
    for _ in range(steps):
        opt.zero_grad()
        sum((getattr(model, n) * weights[n]).sum() + 0.5 * (getattr(model, n) ** 2).sum() for n in model.param_names).backward()
        opt.step()
    opt.zero_grad()
    sum((getattr(model, n) * weights[n]).sum() for n in model.param_names).backward()
    return opt


# ---------------------------------------------------------------------------- extra per-Gaussian parameters

def test_extra_parameter_is_cloned_split_pruned_with_its_adam_state():
    scales, opac, grads = scenario()
    model = synthetic_model(scales, opac)
    add_ids(model)
    assert model.param_names[-1] == "feat" and model.feat.shape == (len(opac), 3)
    opt = warm(model)
    old_sh0, old_feat = model.sh0.detach().clone(), model.feat.detach().clone()
    old_avg = opt.state[model.feat]["exp_avg"].clone()
    old_grad = model.feat.grad.clone()
    clone, split, low, pruned = expected_outcome(model, grads)
    ctrl = DensityController()
    feed(ctrl, grads)
    info = ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(0))
    assert (info["cloned"], info["split"], info["pruned"]) == (int(clone.sum()), int(split.sum()), pruned)
    check_optimizer_matches(model, opt)
    n = model.num_gaussians
    assert model.feat.shape == (n, 3) and opt.state[model.feat]["exp_avg"].shape == (n, 3) and model.feat.grad.shape == (n, 3)
    # Every row's feature is its source Gaussian's (found by its colour, copied exactly by clones and splits).
    src = [int(torch.nonzero((old_sh0 == model.sh0.detach()[r]).all(-1).all(-1)).squeeze()) for r in range(n)]
    assert torch.equal(model.feat.detach(), old_feat[src])
    # Survivors keep moments and gradient; new rows start at zero, as for every other parameter.
    nk = int((~split & ~low).sum())
    assert torch.equal(opt.state[model.feat]["exp_avg"][:nk], old_avg[src[:nk]])
    assert torch.equal(model.feat.grad[:nk], old_grad[src[:nk]])
    assert not opt.state[model.feat]["exp_avg"][nk:].any() and not model.feat.grad[nk:].any()
    assert sorted(set(src[nk:])) == sorted(torch.nonzero((clone | split) & ~low).squeeze(1).tolist())
    opt.step()


def test_extra_parameter_follows_initialisation_and_checkpoints():
    model = GaussianModel(1)
    add_ids(model, 4)
    assert model.feat.shape == (0, 4)
    model.init_from_points(torch.randn(10, 3), torch.rand(10, 3))
    assert model.feat.shape == (10, 4) and model.feat[:, 0].tolist() == list(range(10))
    state = model.state_dict()
    other = GaussianModel(1)
    add_ids(other, 4)
    other.load_state_dict(state)  # adopts N
    assert torch.equal(other.feat, model.feat)
    add_ids(other, 4)  # declaring again keeps the values
    assert torch.equal(other.feat, model.feat)
    with pytest.raises(ValueError, match="exists with shape"):
        other.add_parameter("feat", (5,), lambda n: torch.zeros(n, 5))
    with pytest.raises(ValueError, match="name is taken"):
        other.add_parameter("means", (3,), lambda n: torch.zeros(n, 3))
    assert "means" in other.to_splats().__dict__ and "feat" not in other.to_splats().__dict__


# ---------------------------------------------------------------------------- the renderer

def tiny_scene(n=300, seed=0, sh_degree=1, sh_spread=0.1, colours=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    model = GaussianModel(sh_degree)
    rgb = colours[0] + (colours[1] - colours[0]) * torch.rand(n, 3, generator=g)
    model.init_from_points(torch.randn(n, 3, generator=g) * 0.5, rgb, init_opacity=0.5)
    with torch.no_grad():
        model.shN.normal_(0, sh_spread, generator=g)
    model.active_sh_degree.fill_(sh_degree)
    return model


def cameras(n=2, size=32, groups=(0, 1)):
    R = torch.eye(3).expand(n, 3, 3)
    T = torch.tensor([[0.1 * i, 0.0, 3.0] for i in range(n)])
    f = torch.full((n,), 40.0)
    return Cameras.from_numpy(R, T, f, f, torch.full((n,), size / 2), torch.full((n,), size / 2),
                              torch.full((n,), size), torch.full((n,), size), torch.tensor(groups[:n]))


class FakeScene:
    def __init__(self, names, train_groups, cams):
        self.appearance_group_names = names
        self.cameras = cams
        self.train_ids = [i for i in range(len(cams)) if int(cams.appearance_id[i]) in train_groups]


def appearance(model, names=("day", "night"), trained=(0, 1), backend="cpu", **kw):
    r = AppearanceMLPRenderer(backend=backend, **kw)
    cams = cameras(len(names), groups=tuple(range(len(names))))
    r.setup(model, FakeScene(list(names), set(trained), cams), "fit")
    return r


def randomise(r: AppearanceMLPRenderer, seed=3, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in r.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_starts_exactly_as_plain_3dgs(backend):
    model = tiny_scene()
    r = appearance(model, backend=backend, warm_up=0)
    r.train()
    cams, bg = cameras(), torch.tensor([0.2, 0.3, 0.4])
    plain = VanillaRenderer(backend=backend)(model, cams, bg)
    out = r(model, cams, bg)
    assert torch.equal(out.colors, plain.colors) and torch.equal(out.alphas, plain.alphas)
    # The bit-exact start holds through training (the head is zero), and gradients reach the head.
    out.colors.sum().backward()
    assert r.head.weight.grad.abs().sum() > 0 and r.embeddings.grad is not None


def test_warm_up_skips_the_model_and_schedules_learning_rates():
    model = tiny_scene()
    r = appearance(model, warm_up=10, lr_final_factor=0.1)
    randomise(r)
    gaussian_lrs, groups = r.optimizer_groups()
    opt = create_optimizer(model, {**{n: 1e-3 for n in GaussianModel.PARAM_NAMES}, **gaussian_lrs}, extra_groups=groups)
    names = [g["name"] for g in opt.param_groups]
    assert names[-3:] == [FEATURES, "appearance_embeddings", "appearance_mlp"]
    cams, bg = cameras(), torch.zeros(3)
    r.train()
    r.begin_step(9, opt, 110)
    assert torch.equal(r(model, cams, bg).colors, VanillaRenderer(backend="cpu")(model, cams, bg).colors)
    r.begin_step(10, opt, 110)
    assert not torch.equal(r(model, cams, bg).colors, VanillaRenderer(backend="cpu")(model, cams, bg).colors)
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr["appearance_mlp"] == pytest.approx(r.mlp_lr) and lr[FEATURES] == pytest.approx(r.features_lr)
    r.begin_step(60, opt, 110)  # half way: sqrt(0.1)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["appearance_embeddings"] == pytest.approx(r.embedding_lr * math.sqrt(0.1))
    r.begin_step(500, opt, 110)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["appearance_mlp"] == pytest.approx(r.mlp_lr * 0.1)
    r.eval()
    r.begin_step(0, opt, 110)  # evaluation always uses the model
    assert not torch.equal(r(model, cams, bg).colors, VanillaRenderer(backend="cpu")(model, cams, bg).colors)


def test_colours_are_the_affine_transform_of_the_group():
    """The render equals a plain render of colours max((1 + a) c + b, 0) with [a, b] = M_g [f; c0; 1]
    computed independently here, for each group."""
    from internal.rasterize import rasterize
    from internal.rasterize.projection import view_colors

    model = tiny_scene()
    r = appearance(model, names=("a", "b", "c"))
    randomise(r)
    r.eval()
    cams = cameras(3, groups=(2, 0, 1))
    bg = torch.zeros(3)
    out = r(model, cams, bg)
    x = torch.cat([getattr(model, FEATURES), SH_C0 * model.sh0[:, 0] + 0.5, torch.ones(model.num_gaussians, 1)], 1)
    for c in range(3):
        e = r.embeddings[int(cams.appearance_id[c])]
        h = e
        for layer in list(r.mlp)[:-1]:
            h = layer(h)
        M = (r.head.weight @ h + r.head.bias).view(6, -1)
        ab = x @ M.T
        colors = view_colors(model.means, model.get_sh(), 1, cams[c].viewmats())[0]
        colors = ((1 + ab[:, :3]) * colors + ab[:, 3:]).clamp_min(0)
        ref = rasterize(model.get_means(), model.get_quats(), model.get_scales(), model.get_opacities(), colors,
                        cams[c].viewmats(), cams[c].Ks(), 32, 32, backgrounds=bg, backend="torch")
        torch.testing.assert_close(out.colors[c], ref.colors[0], atol=2e-5, rtol=0)


def test_affine_colors_backward_against_finite_differences_and_autograd():
    from internal.renderers.appearance import affine_colors

    g = torch.Generator().manual_seed(2)
    c, n, f = 2, 30, 5
    colors = torch.rand(c, n, 3, generator=g, dtype=torch.float64)
    colors[0, :4] = -0.05  # some clamped on the way in: (1 + a) c + b < 0 for some
    features = torch.randn(n, f, generator=g, dtype=torch.float64)
    base = torch.rand(n, 3, generator=g, dtype=torch.float64)
    matrices = 0.3 * torch.randn(c, 6, f + 4, generator=g, dtype=torch.float64)
    inputs = (colors.requires_grad_(), features.requires_grad_(), base, matrices.requires_grad_())
    assert torch.autograd.gradcheck(affine_colors, inputs)
    # The same values and gradients as the autograd expression it replaces.
    x = torch.cat([features, base, torch.ones(n, 1, dtype=torch.float64)], 1)
    ab = torch.einsum("nk,cjk->cnj", x, matrices)
    ref = ((1 + ab[..., :3]) * colors + ab[..., 3:]).clamp_min(0)
    out = affine_colors(*inputs)
    assert (out == 0).any() and torch.allclose(out, ref)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), [colors, features, matrices])
    want = torch.autograd.grad((ref * w).sum(), [colors, features, matrices])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_gradients_match_finite_differences():
    """Through the whole renderer (torch backend, float64): embedding, MLP, features and SH."""
    model = tiny_scene(n=40)
    r = appearance(model, backend="torch")
    randomise(r, scale=0.2)
    model.double()
    r.double()
    r.eval()
    cams = cameras(1, size=16)
    w = torch.rand(1, 16, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def loss():
        return (r(model, cams, torch.zeros(3, dtype=torch.float64)).colors * w).sum()

    loss().backward()
    for tensor, idx in ((r.embeddings, (0, 3)), (r.head.weight, (4, 7)), (r.mlp[0].weight, (5, 2)),
                        (getattr(model, FEATURES), (7, 1)), (model.shN, (3, 1, 2))):
        analytic = tensor.grad[idx].item()
        with torch.no_grad():
            old = tensor[idx].item()
            tensor[idx] = old + 1e-6
            up = loss().item()
            tensor[idx] = old - 1e-6
            down = loss().item()
            tensor[idx] = old
        assert analytic == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-8), tensor.shape


def test_groups_by_name_and_clear_errors():
    model = tiny_scene()
    r = appearance(model, names=("day", "dusk", "night"))
    assert r.group_names == ["day", "dusk", "night"] and r.group_index("night") == 2
    with pytest.raises(ValueError, match="unknown appearance group 'noon'; the model has: day, dusk, night"):
        r.group_index("noon")
    r.eval()
    with pytest.raises(ValueError, match="does not index the 3 appearance groups"):
        r(model, cameras(1, groups=(3,)), torch.zeros(3))
    with pytest.raises(ValueError, match="has no appearance groups"):
        VanillaRenderer().export_splats(model, "day")


def test_ply_export_bakes_the_group_into_the_sh():
    import internal as gs

    # SH colours in [0.1, 0.9] before the clamp: there the bake is exact (see export_splats).
    model = tiny_scene(sh_degree=2, sh_spread=0.02, colours=(0.2, 0.8))
    r = appearance(model, names=("a", "b"))
    randomise(r, scale=0.02)
    with torch.no_grad():
        r.embeddings.normal_(0, 1, generator=torch.Generator().manual_seed(4))  # two distinct looks
    r.eval()
    cams = cameras(2, groups=(1, 1))
    bg = torch.zeros(3)
    want = r(model, cams, bg).colors
    splats = r.export_splats(model, "b")
    baked = GaussianModel.from_splats(splats)
    got = VanillaRenderer(backend="cpu")(baked, cams, bg).colors
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(VanillaRenderer(backend="cpu")(GaussianModel.from_splats(r.export_splats(model, "a")), cams, bg).colors, want, atol=1e-3)
    default = r.export_splats(model)  # the first group
    assert torch.equal(default.sh0, r.export_splats(model, "a").sh0)
    assert torch.equal(splats.means, model.means.detach())


def test_evaluation_protocols():
    model = tiny_scene()
    # Group "b" had no training images: its views are scored on the right half after fitting an embedding on the left.
    r = appearance(model, names=("a", "b"), trained=(0,), eval_embedding_steps=30, eval_embedding_lr=0.05)
    randomise(r, scale=0.05)
    r.eval()
    bg = torch.zeros(3)
    cam_a, cam_b = cameras(2, groups=(0, 1))[0], cameras(2, groups=(0, 1))[1]
    img = torch.rand(32, 32, 3)
    out, mask, protocol = r.render_for_evaluation(model, cam_a, bg, img, None)
    assert protocol == PROTOCOL_OWN_GROUP and mask is None
    torch.testing.assert_close(out.colors, r(model, cam_a, bg).colors)
    # Ground truth for b: the render of a known embedding. Fitting from the trained groups' mean gets close to it.
    with torch.no_grad():
        target_embedding = r.embeddings[0] + 0.8 * torch.randn(r.embedding_dim, generator=torch.Generator().manual_seed(9))
        gt = r._render(model, cam_b, bg, target_embedding[None]).colors[0].clamp(0, 1)
    user_mask = torch.ones(32, 32, dtype=torch.bool)
    user_mask[:4] = False
    out, mask, protocol = r.render_for_evaluation(model, cam_b, bg, gt, user_mask)
    assert protocol == PROTOCOL_NERFW
    assert mask[:, 16:][4:].all() and not mask[:, :16].any() and not mask[:4].any()
    start = r._render(model, cam_b, bg, r.embeddings[[0]]).colors[0]
    err_start = ((start - gt)[mask] ** 2).mean()
    err_fit = ((out.colors[0] - gt)[mask] ** 2).mean()
    assert err_fit < 0.25 * err_start, (float(err_fit), float(err_start))
    # Nothing but the embedding was touched: no .grad on the model or the MLP.
    assert all(p.grad is None for p in list(r.parameters()) + list(model.parameters()))
