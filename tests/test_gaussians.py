"""GaussianModel (init, activations, SH schedule, PLY, resume) and the optimizer surgery in internal/optim.py."""

import math

import pytest
import torch

from internal.gaussians import GaussianModel
from internal.optim import (
    append_gaussians,
    check_optimizer_matches,
    create_optimizer,
    exp_lr,
    keep_gaussians,
    param_group,
    reset_state_rows,
)
from internal.rasterize.projection import SH_C0

NAMES = GaussianModel.PARAM_NAMES


def random_model(n: int, sh_degree: int = 1, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    model = GaussianModel(sh_degree)
    k = (sh_degree + 1) ** 2
    model.replace_parameters(
        {
            "means": torch.randn(n, 3, generator=g),
            "quats": torch.randn(n, 4, generator=g),
            "scales": torch.log(0.01 + 0.1 * torch.rand(n, 3, generator=g)),
            "opacities": torch.randn(n, generator=g),
            "sh0": torch.randn(n, 1, 3, generator=g),
            "shN": torch.randn(n, k - 1, 3, generator=g),
        }
    )
    return model


def warm_adam(model: GaussianModel, steps: int = 3, seed: int = 1) -> torch.optim.Adam:
    """An Adam that has taken `steps` steps (non-empty, row-distinct moments) and holds a fresh gradient,
    as the optimizer looks when the density controller runs (after backward, before step)."""
    opt = create_optimizer(model, {name: 1e-3 for name in NAMES})
    g = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(getattr(model, name).shape, generator=g) for name in NAMES}

    def loss():
        return sum((getattr(model, n) * weights[n]).sum() + 0.5 * (getattr(model, n) ** 2).sum() for n in NAMES)

    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    opt.zero_grad()
    loss().backward()
    return opt


def snapshot(model, opt):
    """Clones of every parameter, grad and Adam moment, by name."""
    out = {}
    for name in NAMES:
        p = getattr(model, name)
        st = opt.state[p]
        out[name] = {
            "value": p.detach().clone(),
            "grad": p.grad.clone(),
            "exp_avg": st["exp_avg"].clone(),
            "exp_avg_sq": st["exp_avg_sq"].clone(),
            "step": st["step"].clone(),
        }
    return out


def assert_consistent(model, opt):
    """Every group holds the live parameter; every state and grad has the parameter's shape."""
    for group in opt.param_groups:
        assert group["params"][0] is getattr(model, group["name"])
    for name in NAMES:
        p = getattr(model, name)
        assert p.shape[0] == model.num_gaussians
        if p.grad is not None:
            assert p.grad.shape == p.shape
        for key in ("exp_avg", "exp_avg_sq"):
            if p in opt.state:
                assert opt.state[p][key].shape == p.shape, (name, key)
    check_optimizer_matches(model, opt)


# ------------------------------------------------------------------ initialisation


def brute_force_scale(xyz: torch.Tensor) -> torch.Tensor:
    """sqrt(mean of the squared distances to the 3 nearest other points), clamped as 3DGS (1e-7)."""
    x = xyz.double()
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d2.fill_diagonal_(float("inf"))
    k = min(3, x.shape[0] - 1)
    if k == 0:
        return torch.full((x.shape[0],), math.sqrt(1e-7), dtype=torch.float64)
    nearest = d2.topk(k, dim=1, largest=False).values
    return nearest.mean(1).clamp_min(1e-7).sqrt()


def test_init_from_points_scales_colours_and_defaults():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(300, 3, generator=g) * torch.tensor([1.0, 0.3, 2.0])
    xyz[10] = xyz[11]  # a duplicate pair: its nearest distance is 0, the others are not
    rgb = torch.rand(300, 3, generator=g)
    model = GaussianModel(3)
    model.init_from_points(xyz, rgb)
    expected = brute_force_scale(xyz).float()
    assert model.num_gaussians == 300
    assert torch.allclose(model.get_scales(), expected[:, None].expand(300, 3), rtol=1e-5)
    assert torch.allclose(SH_C0 * model.sh0[:, 0] + 0.5, rgb, atol=1e-6)
    assert torch.equal(model.means.detach(), xyz)
    assert torch.equal(model.quats.detach(), torch.tensor([1.0, 0, 0, 0]).expand(300, 4))
    assert torch.allclose(model.get_opacities(), torch.full((300,), 0.1))
    assert model.shN.shape == (300, 15, 3) and not model.shN.any()
    assert model.get_sh().shape == (300, 16, 3)


def test_initialised_model_trains_and_owns_its_storage():
    xyz, rgb = torch.rand(50, 3), torch.rand(50, 3)
    model = GaussianModel(1)
    model.init_from_points(xyz, rgb)
    opt = create_optimizer(model, {name: 1e-2 for name in NAMES})
    sum((getattr(model, n) ** 2).sum() for n in NAMES).backward()
    opt.step()  # in-place updates: fails on an expanded (stride-0) scale tensor
    assert not torch.equal(model.means.detach(), xyz)  # moved, while the caller's points did not
    splats = model.to_splats()
    other = GaussianModel.from_splats(splats)
    other.means.data.add_(1.0)
    assert torch.equal(splats.means, model.means.detach())


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_init_from_few_points(p):
    xyz = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])[:p]
    model = GaussianModel(0)
    model.init_from_points(xyz, torch.full((p, 3), 0.5), init_scale_factor=2.0)
    assert torch.allclose(model.get_scales()[:, 0], 2.0 * brute_force_scale(xyz).float(), rtol=1e-5)
    assert torch.isfinite(model.scales).all()


def test_init_all_duplicates_is_finite_floor():
    model = GaussianModel(1)
    model.init_from_points(torch.ones(5, 3), torch.zeros(5, 3))
    assert torch.allclose(model.get_scales(), torch.full((5, 3), math.sqrt(1e-7)), rtol=1e-5)


def test_activations():
    model = random_model(20)
    assert torch.allclose(model.get_quats().norm(dim=-1), torch.ones(20))
    assert torch.allclose(model.get_scales(), model.scales.exp())
    assert torch.allclose(model.get_opacities(), model.opacities.sigmoid())
    assert torch.equal(model.get_sh()[:, 1:], model.shN.detach())


def test_sh_degree_steps_up_to_the_maximum_and_is_checkpointed():
    model = GaussianModel(2)
    assert int(model.active_sh_degree) == 0
    assert [model.step_sh_degree() for _ in range(4)] == [1, 2, 2, 2]
    assert int(model.state_dict()["active_sh_degree"]) == 2
    other = GaussianModel(2)
    other.load_state_dict(model.state_dict())
    assert int(other.active_sh_degree) == 2


# ------------------------------------------------------------------ Splats / PLY


def test_ply_and_splats_round_trip(tmp_path):
    model = random_model(25, sh_degree=3)
    path = model.save_ply(tmp_path / "m.ply")
    loaded = GaussianModel.load_ply(path)
    assert loaded.sh_degree == 3 and int(loaded.active_sh_degree) == 3
    for name in NAMES:
        assert torch.equal(getattr(loaded, name).detach(), getattr(model, name).detach()), name
    splats = model.to_splats()
    assert not splats.means.requires_grad and splats.means.data_ptr() != model.means.data_ptr()


def test_load_splats_pads_missing_sh_bands():
    low = random_model(8, sh_degree=1).to_splats()
    model = GaussianModel.from_splats(low, sh_degree=3)
    assert model.shN.shape == (8, 15, 3)
    assert torch.equal(model.shN[:, :3].detach(), low.shN) and not model.shN[:, 3:].any()
    assert int(model.active_sh_degree) == 1


# ------------------------------------------------------------------ identity and resume


def test_replace_parameters_installs_new_leaves_and_checks_sizes():
    model = random_model(5)
    before = {name: getattr(model, name) for name in NAMES}
    swapped = model.replace_parameters({name: getattr(model, name).detach()[:2] for name in NAMES})
    assert all(swapped[name] == (before[name], getattr(model, name)) for name in NAMES)
    assert all(getattr(model, name) is not before[name] for name in NAMES)
    assert model.num_gaussians == 2 and model.means.requires_grad
    assert dict(model.named_parameters())["means"] is model.means
    with pytest.raises(ValueError, match="disagree"):
        model.replace_parameters({"means": torch.zeros(3, 3)})
    assert model.means.shape == (2, 3)  # a refused replacement changes nothing
    with pytest.raises(ValueError, match="must be"):
        model.replace_parameters({"shN": torch.zeros(2, 8, 3)})


def test_surgery_while_the_steps_graph_is_alive():
    # The module densifies between backward and optimizer.step, while the step's graph (render output,
    # loss) is still referenced; the next step's backward must still work on the new sizes.
    model = random_model(6)
    opt = warm_adam(model)
    graphs = []
    for _ in range(3):
        loss = sum((getattr(model, n)[None] ** 2).sum() for n in NAMES)
        loss.backward()
        graphs.append(loss)  # kept alive on purpose
        append_gaussians(model, opt, {name: torch.ones(2, *getattr(model, name).shape[1:]) for name in NAMES})
        keep_gaussians(model, opt, torch.arange(model.num_gaussians) != 1)  # net +1 per step
        opt.step()
        opt.zero_grad()
        assert_consistent(model, opt)


def test_resume_into_a_model_of_another_size():
    src = random_model(37, sh_degree=2, seed=3)
    src.step_sh_degree()
    dst = random_model(10, sh_degree=2, seed=4)
    opt = create_optimizer(dst, {name: 1e-3 for name in NAMES})
    params = {name: getattr(dst, name) for name in NAMES}
    dst.load_state_dict(src.state_dict())
    assert dst.num_gaussians == 37 and int(dst.active_sh_degree) == 1
    for name in NAMES:
        assert getattr(dst, name) is params[name]  # the optimizer still points at them
        assert torch.equal(getattr(dst, name).detach(), getattr(src, name).detach())
    # The optimizer state, restored after the model as Lightning does, fits the new size and steps.
    src_opt = warm_adam(src)
    opt.load_state_dict(src_opt.state_dict())
    assert_consistent(dst, opt)
    assert torch.equal(opt.state[dst.means]["exp_avg"], src_opt.state[src.means]["exp_avg"])
    sum((getattr(dst, n) ** 2).sum() for n in NAMES).backward()
    opt.step()
    assert int(opt.state[dst.means]["step"]) == 4


def test_resume_with_another_sh_degree_is_refused():
    with pytest.raises(RuntimeError, match="shN"):
        random_model(10, sh_degree=1).load_state_dict(random_model(37, sh_degree=3).state_dict())


# ------------------------------------------------------------------ optimizer surgery


def test_create_optimizer_names_groups_and_checks_lrs():
    model = random_model(4)
    lrs = {"means": 1.6e-4, "quats": 1e-3, "scales": 5e-3, "opacities": 0.05, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    opt = create_optimizer(model, lrs)
    assert [g["name"] for g in opt.param_groups] == list(NAMES)
    assert param_group(opt, "opacities")["lr"] == 0.05 and opt.defaults["eps"] == 1e-15
    with pytest.raises(KeyError):
        create_optimizer(model, {**lrs, "mean": 1.0})


def test_append_keeps_old_rows_and_zeroes_new_ones():
    model = random_model(6)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    new = {name: torch.randn(2, *getattr(model, name).shape[1:]) for name in NAMES}
    append_gaussians(model, opt, new)
    assert_consistent(model, opt)
    assert model.num_gaussians == 8
    for name in NAMES:
        p, st = getattr(model, name), opt.state[getattr(model, name)]
        assert torch.equal(p.detach(), torch.cat([old[name]["value"], new[name]]))
        for key in ("grad", "exp_avg", "exp_avg_sq"):
            t = p.grad if key == "grad" else st[key]
            assert torch.equal(t[:6], old[name][key]) and not t[6:].any(), (name, key)
        assert torch.equal(st["step"], old[name]["step"])  # the step counter is not touched
    opt.step()  # and Adam accepts the result


def test_keep_selects_rows_with_their_moments():
    model = random_model(7)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    mask = torch.tensor([True, False, True, True, False, False, True])
    keep_gaussians(model, opt, mask)
    assert_consistent(model, opt)
    for name in NAMES:
        p = getattr(model, name)
        assert torch.equal(p.detach(), old[name]["value"][mask])
        assert torch.equal(opt.state[p]["exp_avg_sq"], old[name]["exp_avg_sq"][mask])
        assert torch.equal(p.grad, old[name]["grad"][mask])
    opt.step()


def test_reset_rows_sets_values_and_zeroes_moments_of_those_rows():
    model = random_model(5)
    opt = warm_adam(model)
    old = snapshot(model, opt)
    rows = torch.tensor([True, False, True, False, False])
    reset_state_rows(model, opt, "opacities", lambda t: torch.full_like(t, -3.0), rows)
    assert_consistent(model, opt)
    p = model.opacities
    assert torch.equal(p.detach(), torch.where(rows, torch.tensor(-3.0), old["opacities"]["value"]))
    for key in ("exp_avg", "exp_avg_sq"):
        assert not opt.state[p][key][rows].any()
        assert torch.equal(opt.state[p][key][~rows], old["opacities"][key][~rows])
    assert not p.grad[rows].any()
    assert torch.equal(opt.state[model.means]["exp_avg"], old["means"]["exp_avg"])  # other parameters untouched


def test_surgery_before_the_first_optimizer_step():
    model = random_model(4)
    opt = create_optimizer(model, {name: 1e-2 for name in NAMES})
    append_gaussians(model, opt, {name: torch.zeros(3, *getattr(model, name).shape[1:]) for name in NAMES})
    keep_gaussians(model, opt, torch.tensor([True, False] * 3 + [True]))
    reset_state_rows(model, opt, "opacities", lambda t: t.clamp_max(-4.0))
    assert model.num_gaussians == 4 and len(opt.state) == 0
    sum((getattr(model, n) ** 2).sum() for n in NAMES).backward()
    opt.step()
    assert_consistent(model, opt)


def test_exp_lr_endpoints_midpoint_and_after():
    assert exp_lr(0, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-4)
    assert exp_lr(15000, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-5)  # geometric mean
    assert exp_lr(30000, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-6)
    assert exp_lr(90000, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-6)
    assert exp_lr(7500, 1e-2, 1e-4, 30000) == pytest.approx(1e-2 * 10 ** -0.5)
    # 3DGS's optional warm-up multiplier: delay_mult at step 0, 1 after delay_steps
    assert exp_lr(0, 1.0, 1.0, 100, delay_steps=10, delay_mult=0.01) == pytest.approx(0.01)
    assert exp_lr(10, 1.0, 1.0, 100, delay_steps=10, delay_mult=0.01) == pytest.approx(1.0)
