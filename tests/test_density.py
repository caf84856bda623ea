"""DensityController: statistics, clone/split/prune counts, optimizer state through surgery, split
sampling, opacity reset, the 3DGS schedule, the cap, cross-process reduction and resume."""

import copy
import math

import pytest
import torch

from internal.density import DensityController, split_samples
from internal.gaussians import GaussianModel
from internal.rasterize import rasterize
from internal.rasterize.projection import quat_to_rotmat
from tests.test_gaussians import NAMES, assert_consistent, snapshot, warm_adam

W, H = 40, 20  # pixel gradient -> NDC gradient: x times 20, y times 10
EXTENT = 1.0  # clone/split boundary at max scale 0.01, world-size pruning above 0.1


def synthetic_model(scales, opacities, seed=0, sh_degree=1) -> GaussianModel:
    """Gaussians with the given (N,3) scales and (N,) opacities (activated), random everything else."""
    g = torch.Generator().manual_seed(seed)
    n = len(opacities)
    k = (sh_degree + 1) ** 2
    model = GaussianModel(sh_degree)
    model.replace_parameters(
        {
            "means": torch.randn(n, 3, generator=g),
            "quats": torch.randn(n, 4, generator=g),
            "scales": torch.log(torch.as_tensor(scales, dtype=torch.float32)),
            "opacities": torch.logit(torch.as_tensor(opacities, dtype=torch.float32)),
            "sh0": torch.randn(n, 1, 3, generator=g),
            "shN": torch.randn(n, k - 1, 3, generator=g),
        }
    )
    return model


def feed(ctrl: DensityController, ndc_norms, radii=None, views: int = 2):
    """Feed `views` steps in which Gaussian i has NDC gradient norm ndc_norms[i] (so its average is
    exactly that), plus one step in which every Gaussian is invisible but has a huge gradient (which
    must be ignored). The gradient direction is split between x and y to exercise both scalings."""
    ndc = torch.as_tensor(ndc_norms, dtype=torch.float32)
    n = ndc.shape[0]
    radii = torch.full((n,), 3, dtype=torch.int32) if radii is None else torch.as_tensor(radii, dtype=torch.int32)
    pixel = torch.stack([0.6 * ndc / (W / 2), 0.8 * ndc / (H / 2)], dim=-1)  # |(0.6, 0.8)| = 1
    for _ in range(views):
        ctrl.update_stats(pixel[None], radii[None], W, H)
    ctrl.update_stats(torch.full((1, n, 2), 1e3), torch.zeros(1, n, dtype=torch.int32), W, H)


def scenario(n=12, seed=0):
    """Rows: small (max scale 0.002) / large (0.05); high (5e-4) / low (1e-4) gradient; some nearly
    transparent (0.001 < prune_opacity)."""
    g = torch.Generator().manual_seed(seed)
    large = torch.arange(n) % 2 == 1
    base = torch.where(large, 0.05, 0.002)
    scales = base[:, None] * (0.5 + 0.5 * torch.rand(n, 3, generator=g))
    scales[torch.arange(n), torch.randint(0, 3, (n,), generator=g)] = base  # max scale exactly base
    opac = torch.where(torch.arange(n) % 5 == 2, 0.001, 0.6)
    grads = torch.where(torch.arange(n) % 3 == 0, 1e-4, 5e-4)
    return scales, opac, grads


def expected_outcome(model, grads, threshold=2e-4, split_count=2):
    smax = model.get_scales().max(1).values
    high = torch.as_tensor(grads) >= threshold
    clone = high & (smax <= 0.01 * EXTENT)
    split = high & (smax > 0.01 * EXTENT)
    low = model.get_opacities() < 0.005
    # Pruned: transparent originals that were not split, transparent clones, children of transparent parents.
    pruned = (low & ~split).sum() + (low & clone).sum() + split_count * (low & split).sum()
    return clone, split, low, int(pruned)


# ------------------------------------------------------------------ statistics


def test_update_stats_uses_ndc_scale_visibility_and_max_radius():
    ctrl = DensityController()
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(2, 5, 2, generator=g)
    radii = torch.tensor([[0, 4, 7, 1, 0], [3, 9, 0, 2, 0]], dtype=torch.int32)
    ctrl.update_stats(grad, radii, W, H)
    ctrl.update_stats(grad[0], radii[0], W, H)  # (N,2) / (N,) for a single camera
    ndc = (grad * torch.tensor([W / 2, H / 2])).norm(dim=-1)
    vis = (radii > 0).float()
    torch.testing.assert_close(ctrl.grad_accum, (ndc * vis).sum(0) + ndc[0] * vis[0])
    torch.testing.assert_close(ctrl.count, vis.sum(0) + vis[0])
    torch.testing.assert_close(ctrl.max_radii, torch.tensor([3.0, 9, 7, 2, 0]))


def test_stats_from_a_real_render():
    model = synthetic_model([[0.1] * 3, [0.1] * 3, [0.1] * 3], [0.5, 0.5, 0.5])
    model.replace_parameters({"means": torch.tensor([[0.0, 0, 0], [0.3, 0.1, 0], [0.0, 0, -10.0]])})
    vm = torch.eye(4)
    vm[2, 3] = 3.0
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    out = rasterize(model.get_means(), model.get_quats(), model.get_scales(), model.get_opacities(), model.get_sh(),
                    vm[None], K[None], 32, 32, sh_degree=0, backend="torch")
    out.means2d.retain_grad()
    (out.colors * torch.linspace(0, 1, 32)[:, None, None]).sum().backward()
    ctrl = DensityController()
    ctrl.update_stats(out.means2d.grad, out.radii, 32, 32)
    assert ctrl.count.tolist() == [1.0, 1.0, 0.0]  # the third is behind the camera
    assert (ctrl.grad_accum[:2] > 0).all() and ctrl.grad_accum[2] == 0
    torch.testing.assert_close(ctrl.grad_accum[:2], (out.means2d.grad[0, :2] * 16).norm(dim=-1))


# ------------------------------------------------------------------ densify and prune


def test_densify_counts_state_and_moments():
    scales, opac, grads = scenario()
    model = synthetic_model(scales, opac)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    clone, split, low, pruned = expected_outcome(model, grads)
    assert clone.sum() > 0 and split.sum() > 0 and pruned > 0 and (low & split).any() and (low & clone).any()
    ctrl = DensityController()
    feed(ctrl, grads)
    info = ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(0))
    n = len(opac)
    assert info["densified"] and not info["reset"]
    assert (info["cloned"], info["split"], info["pruned"]) == (int(clone.sum()), int(split.sum()), pruned)
    assert model.num_gaussians == info["num_gaussians"] == n + int(clone.sum()) + int(split.sum()) - pruned
    assert_consistent(model, opt)

    # Survivors, in order: unsplit opaque originals (old rows, old moments, old grads), then opaque
    # clones (copies, zero moments), then children of opaque parents (zero moments).
    kept = ~split & ~low
    nk = int(kept.sum())
    for name in NAMES:
        p = getattr(model, name)
        st = opt.state[p]
        assert torch.equal(p.detach()[:nk], old[name]["value"][kept]), name
        for key in ("exp_avg", "exp_avg_sq", "grad"):
            t = p.grad if key == "grad" else st[key]
            assert torch.equal(t[:nk], old[name][key][kept]), (name, key)
            assert not t[nk:].any(), (name, key)
        assert torch.equal(st["step"], old[name]["step"])
    nc = int((clone & ~low).sum())
    assert torch.equal(model.means.detach()[nk:nk + nc], old["means"]["value"][clone & ~low])
    parents = split & ~low
    children_scales = model.scales.detach()[nk + nc:]
    torch.testing.assert_close(children_scales, (old["scales"]["value"][parents] - math.log(1.6)).repeat(2, 1))
    assert ctrl.grad_accum.shape == (model.num_gaussians,) and not ctrl.grad_accum.any() and not ctrl.count.any()
    opt.step()  # Adam accepts the result


def test_split_is_deterministic_given_the_generator():
    scales, opac, grads = scenario()

    def run(seed):
        model = synthetic_model(scales, opac)
        opt = warm_adam(model)
        ctrl = DensityController()
        feed(ctrl, grads)
        ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(seed))
        return model

    a, b, c = run(7), run(7), run(8)
    for name in NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.num_gaussians == c.num_gaussians and not torch.equal(a.means, c.means)
    # The children are exactly split_samples of their parents with that generator.
    ref = synthetic_model(scales, opac)
    warm_adam(ref)
    clone, split, low, _ = expected_outcome(ref, grads)
    parents = split & ~low
    g = torch.Generator().manual_seed(7)
    # Transparent parents' children are drawn too (then pruned): draw for all split parents.
    all_children = split_samples(ref.means[split].detach(), ref.quats[split].detach(), ref.get_scales()[split].detach(), 2, g)
    keep_child = parents[split].repeat(2)
    nk, nc = int((~split & ~low).sum()), int((clone & ~low).sum())
    torch.testing.assert_close(a.means.detach()[nk + nc:], all_children[keep_child])


def test_split_samples_follow_the_gaussian():
    q = torch.tensor([[0.8, 0.3, -0.4, 0.33]])
    s = torch.tensor([[1.0, 0.5, 0.2]])
    mean = torch.tensor([[2.0, -1.0, 0.5]])
    x = split_samples(mean.double(), q.double(), s.double(), 40000, torch.Generator().manual_seed(0))
    assert x.shape == (40000, 3)
    r = quat_to_rotmat(q.double())[0]
    cov = r @ torch.diag(s[0].double() ** 2) @ r.T
    torch.testing.assert_close(x.mean(0), mean[0].double(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.02, rtol=0)
    assert (torch.cov(x.T) - torch.diag(s[0].double() ** 2)).abs().max() > 0.1  # the rotation matters here


def test_size_pruning_starts_after_the_first_reset():
    # Row 1 is large in the world (0.2 > 0.1*extent), row 2 was seen 25 px wide (> 20), row 3 is
    # transparent; row 5 is small with a high gradient (cloned) and was seen 25 px wide: its clone is
    # an exact copy, so it carries the measurement and goes too.
    scales = torch.full((6, 3), 0.005)
    scales[1] = 0.2
    opac = torch.tensor([0.6, 0.6, 0.6, 0.001, 0.6, 0.6])
    grads = [0.0, 0.0, 0.0, 0.0, 0.0, 1e-3]
    radii = [5, 5, 25, 5, 5, 25]
    results = {}
    for step, screen in ((599, 20), (3099, 20), (3099, 0)):
        model = synthetic_model(scales, opac)
        opt = warm_adam(model)
        ctrl = DensityController(max_screen_size=screen)
        feed(ctrl, grads, radii)
        info = ctrl.step(step, model, opt, EXTENT, torch.Generator())
        assert info["densified"] and info["cloned"] == 1 and info["split"] == 0
        results[(step, screen)] = info["pruned"]
        assert model.num_gaussians == 7 - info["pruned"]
        assert_consistent(model, opt)
    assert results == {(599, 20): 1, (3099, 20): 5, (3099, 0): 2}


# ------------------------------------------------------------------ opacity reset and schedule


def test_opacity_reset_clamps_and_zeroes_moments():
    opac = torch.tensor([0.9, 0.005, 0.3, 0.02])
    model = synthetic_model(torch.full((4, 3), 0.005), opac)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    ctrl = DensityController(densify_every=7)  # 3000 % 7 != 0: only the reset runs at iteration 3000
    info = ctrl.step(2999, model, opt, EXTENT, torch.Generator())
    assert info["reset"] and not info["densified"]
    assert_consistent(model, opt)
    expected = old["opacities"]["value"].sigmoid().clamp_max(0.01)
    torch.testing.assert_close(model.get_opacities(), expected)
    assert model.opacities[1] == old["opacities"]["value"][1]  # below the cap: value untouched
    st = opt.state[model.opacities]
    assert not st["exp_avg"].any() and not st["exp_avg_sq"].any() and not model.opacities.grad.any()
    assert torch.equal(opt.state[model.scales]["exp_avg"], old["scales"]["exp_avg"])


@pytest.mark.parametrize("white, flag, expected", [(True, True, True), (False, True, False), (True, False, False)])
def test_white_background_reset_at_densify_from(white, flag, expected):
    model = synthetic_model(torch.full((3, 3), 0.005), [0.9, 0.9, 0.9])
    opt = warm_adam(model)
    ctrl = DensityController(reset_opacity_at_densify_from_for_white_background=flag)
    info = ctrl.step(499, model, opt, EXTENT, torch.Generator(), white_background=white)
    assert info["reset"] is expected and not info["densified"]


def test_schedule_maps_3dgs_iterations_to_0_based_steps():
    ctrl = DensityController()
    calls = {"densify": [], "reset": []}

    def fake_densify(model, opt, extent, gen, prune_big):
        calls["densify"].append((step, prune_big))
        return {}

    ctrl.densify_and_prune = fake_densify
    ctrl.reset_opacity = lambda model, opt: calls["reset"].append(step)
    model = GaussianModel(0)
    for step in range(16000):
        ctrl.step(step, model, None, EXTENT, torch.Generator(), white_background=True)
    steps = [s for s, _ in calls["densify"]]
    assert steps == list(range(599, 15000 - 1, 100))  # iterations 600..14900
    assert [s for s, big in calls["densify"] if big] == list(range(3099, 15000 - 1, 100))
    assert calls["reset"] == [499, 2999, 5999, 8999, 11999]
    assert ctrl.wants_stats(14998) and not ctrl.wants_stats(14999)


# ------------------------------------------------------------------ cap, reduction, resume


def test_max_gaussians_keeps_the_highest_gradient_candidates():
    scales, _, _ = scenario(n=10)
    opac = torch.full((10,), 0.6)
    grads = torch.tensor([3e-4, 9e-4, 1e-4, 8e-4, 2.5e-4, 7e-4, 1e-5, 6e-4, 5e-4, 4e-4])
    model = synthetic_model(scales, opac)
    opt = warm_adam(model)
    ctrl = DensityController(max_gaussians=13)  # room for 3 more: clones add 1, splits add 1 net
    feed(ctrl, grads)
    info = ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(0))
    top3 = torch.tensor([1, 3, 5])  # the three largest gradients
    large = torch.arange(10) % 2 == 1
    assert (info["cloned"], info["split"]) == (int((~large[top3]).sum()), int(large[top3].sum()))
    assert model.num_gaussians == 13
    assert_consistent(model, opt)
    # Already at the cap: nothing grows.
    feed(ctrl, torch.full((13,), 1e-3))
    info = ctrl.step(699, model, opt, EXTENT, torch.Generator())
    assert info["cloned"] == info["split"] == 0 and model.num_gaussians == 13


def test_reduce_fn_sees_the_stats_before_the_decision():
    scales, opac, _ = scenario()
    grads = torch.full((12,), 1.5e-4)  # below the threshold alone, above it when doubled
    outcomes = []
    for reduce in (False, True):
        model = synthetic_model(scales, torch.full((12,), 0.6))
        opt = warm_adam(model)
        ctrl = DensityController()
        feed(ctrl, grads)
        seen = []

        def double_gradients(tensors):
            seen.append(len(tensors))
            assert tensors[0] is ctrl.grad_accum and tensors[1] is ctrl.count
            tensors[0].mul_(2)  # as if another process had seen the same gradients (count unchanged)

        ctrl.reduce_fn = double_gradients if reduce else None
        info = ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(0))
        outcomes.append((info["cloned"], info["split"]))
        assert seen == ([3] if reduce else [])
    assert outcomes == [(0, 0), (6, 6)]


def test_two_processes_with_reduced_stats_make_identical_decisions():
    """Two simulated processes see different views; after the (simulated) all-reduce and with equally
    seeded generators their Gaussians are identical, including the screen-size vote only one cast."""
    scales, opac, grads = scenario()
    models = [synthetic_model(scales, opac) for _ in range(2)]
    opts = [warm_adam(m) for m in models]
    clone, split, low, pruned = expected_outcome(models[0], grads)
    ctrls = [DensityController(max_screen_size=20) for _ in range(2)]
    # Averages over both processes' views are exactly `grads`. Gaussian 3 (large, low gradient,
    # opaque: left alone otherwise) was seen 30 px wide by process 1 only.
    feed(ctrls[0], grads * 1.6, radii=[3] * 12)
    feed(ctrls[1], grads * 0.4, radii=[3, 3, 3, 30] + [3] * 8)
    snaps = [[t.clone() for t in c.stats()] for c in ctrls]
    for me, other in ((0, 1), (1, 0)):
        ctrls[me].reduce_fn = lambda ts, o=other: [t.add_(s) for t, s in zip(ts, snaps[o])]
    infos = [c.step(3099, m, o, EXTENT, torch.Generator().manual_seed(3)) for c, m, o in zip(ctrls, models, opts)]
    assert infos[0] == infos[1]
    for name in NAMES:
        assert torch.equal(getattr(models[0], name), getattr(models[1], name))
    assert (infos[0]["cloned"], infos[0]["split"], infos[0]["pruned"]) == (int(clone.sum()), int(split.sum()), pruned + 1)


def test_resume_controller_and_model_with_another_size():
    scales, opac, grads = scenario(n=37)
    src_model = synthetic_model(scales, opac)
    src = DensityController()
    feed(src, grads, radii=torch.arange(1, 38))
    dst_model = synthetic_model(*scenario(n=10)[:2])
    dst = DensityController()
    feed(dst, torch.ones(10))
    state = {"model": src_model.state_dict(), "density": src.state_dict()}
    dst_model.load_state_dict(copy.deepcopy(state["model"]))
    dst.load_state_dict(copy.deepcopy(state["density"]))
    assert dst_model.num_gaussians == 37
    for name in ("grad_accum", "count", "max_radii"):
        assert torch.equal(getattr(dst, name), getattr(src, name)), name
    # and the resumed window is used by the next decision
    opt = warm_adam(dst_model)
    clone, split, _, _ = expected_outcome(dst_model, grads)
    info = dst.step(599, dst_model, opt, EXTENT, torch.Generator())
    assert (info["cloned"], info["split"]) == (int(clone.sum()), int(split.sum()))


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError):
        DensityController(densify_every=0)
    with pytest.raises(ValueError):
        DensityController(reset_opacity_to=1.0)


# ------------------------------------------------------------------------------------------------ MCMC


def _binoms(m=51):
    from internal.density import MCMCDensityController

    return MCMCDensityController(max_copies=m)._binoms


def test_mcmc_relocation_formula_against_the_double_sum():
    """o' = 1 - (1-o)^(1/n); scales times o / sum_{i=1..n} sum_{k<i} C(i-1,k) (-1)^k o'^(k+1) / sqrt(k+1), the
    paper's double sum evaluated term by term here (the code uses the closed inner sum C(n,k+1))."""
    from internal.density import relocation_targets

    o = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.6, 0.99])
    n = torch.tensor([1, 2, 3, 5, 10, 40])
    s = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) + 0.1
    o_new, s_new = relocation_targets(o, s, n, _binoms(), 0.005)
    for j in range(6):
        oj, nj = float(o[j]), int(n[j])
        on = 1 - (1 - oj) ** (1 / nj)
        assert abs(float(o_new[j]) - on) < 1e-6
        assert abs(1 - (1 - float(o_new[j])) ** nj - oj) < 1e-5  # n copies stacked let through what one did
        denom = sum(math.comb(i - 1, k) * (-1) ** k * on ** (k + 1) / math.sqrt(k + 1) for i in range(1, nj + 1) for k in range(i))
        torch.testing.assert_close(s_new[j], s[j] * (oj / denom), rtol=1e-5, atol=0)
    assert torch.equal(o_new[0], o[0]) and torch.allclose(s_new[0], s[0])  # one copy: unchanged


def test_mcmc_relocates_the_dead_grows_to_the_cap_and_restarts_their_moments():
    from internal.density import MCMCDensityController

    n = 40
    opac = torch.full((n,), 0.5)
    opac[::4] = 0.001  # 10 dead
    opac[1] = 0.95  # the likeliest target
    model = synthetic_model(torch.full((n, 3), 0.02), opac)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    ctrl = MCMCDensityController(cap_max=n + 1, noise_lr=0.0)
    info = ctrl.step(599, model, opt, EXTENT, torch.Generator().manual_seed(0))
    assert info["densified"] and info["relocated"] == 10 and info["added"] == 1  # min(cap - N, 5% of 40 = 2)
    assert model.num_gaussians == n + 1 and info["num_gaussians"] == n + 1
    assert_consistent(model, opt)
    assert (model.get_opacities() > ctrl.min_opacity).all()  # nobody dead any more
    dead = torch.zeros(n + 1, dtype=torch.bool)
    dead[:n:4] = True
    # A relocated Gaussian sits exactly on a live one (same mean, colour, rotation; opacity and scale are the
    # ones its target had after the relocation, which the growth step may have shared out again).
    means = model.means.detach()
    live = ~dead & (torch.arange(n + 1) < n)  # the rows that were alive before the step
    for i in list(torch.nonzero(dead).squeeze(1)) + [n]:  # the relocated ones and the added one
        twin = torch.nonzero((means[live] == means[i]).all(1)).squeeze(1)
        assert len(twin) == 1, int(i)
        j = torch.nonzero(live).squeeze(1)[twin[0]]
        for name in ("means", "quats", "sh0", "shN"):
            assert torch.equal(getattr(model, name).detach()[i], getattr(model, name).detach()[j]), name
        assert model.get_opacities()[i] <= old["opacities"]["value"].sigmoid()[j]
    # Rows untouched by any draw keep value, gradient and moments; touched ones restart (zero moments and grad).
    touched = torch.zeros(n + 1, dtype=torch.bool)
    for i in range(n + 1):
        touched[i] = bool(dead[i]) or bool((means == means[i]).all(1).sum() > 1)
    st = opt.state[model.opacities]
    assert not st["exp_avg"][touched].any() and not model.opacities.grad[touched].any()
    keep = ~touched[:n]
    assert torch.equal(st["exp_avg"][:n][keep], old["opacities"]["exp_avg"][keep])
    assert torch.equal(model.means.detach()[:n][keep], old["means"]["value"][keep])
    # At the cap nothing is added; outside the window nothing happens (and no noise with noise_lr 0).
    assert ctrl.step(699, model, opt, EXTENT, torch.Generator().manual_seed(1))["added"] == 0
    assert model.num_gaussians == n + 1
    info = ctrl.step(650, model, opt, EXTENT, torch.Generator().manual_seed(1))
    assert not info["densified"]
    opt.step()


def test_mcmc_noise_moves_only_transparent_gaussians_and_is_reproducible():
    from internal.density import MCMCDensityController

    opac = torch.tensor([0.9, 0.5, 0.01, 0.003, 0.001])
    results = []
    for _ in range(2):
        model = synthetic_model(torch.full((5, 3), 0.05), opac)
        opt = warm_adam(model)
        before = model.means.detach().clone()
        MCMCDensityController().step(10, model, opt, EXTENT, torch.Generator().manual_seed(3))
        results.append(model.means.detach() - before)
    assert torch.equal(results[0], results[1])
    moved = results[0].norm(dim=1)
    assert moved[0] < 1e-12 * moved[4] and moved[1] < 1e-6 * moved[4]  # gated by sigmoid(100 (0.005 - o))
    assert (moved[2:] > 1e-3).all()


def test_mcmc_regularization_and_bad_options():
    from internal.density import MCMCDensityController
    from internal.errors import ConfigError

    model = synthetic_model(torch.full((4, 3), 0.1), torch.tensor([0.2, 0.4, 0.6, 0.8]))
    reg = MCMCDensityController(opacity_reg=0.01, scale_reg=0.02).regularization(model)
    torch.testing.assert_close(reg, torch.tensor(0.01 * 0.5 + 0.02 * 0.1))
    assert DensityController().regularization(model) is None
    for bad in ({"cap_max": 0}, {"grow_rate": 2.0}, {"min_opacity": 0.0}, {"noise_lr": -1.0}, {"max_copies": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            MCMCDensityController(**bad)
