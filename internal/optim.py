"""Optimizer surgery in one place: when Gaussians are added, removed or reset, their parameter rows,
gradient rows and per-row optimizer state (Adam's exp_avg / exp_avg_sq) must change together.

Each edit installs new nn.Parameter objects in the model (GaussianModel.replace_parameters explains
why they cannot be resized in place) and re-points the optimizer at them in the same call: the
param group's "params" list is edited in place and the state moves from the old key to the new
one. What follows the new shape:
  - the parameter values      -> `param_fn(name, tensor)`
  - the .grad (when present)  -> `state_fn(name, tensor)`
  - every optimizer state tensor with the parameter's shape (exp_avg, exp_avg_sq, max_exp_avg_sq)
                              -> `state_fn(name, tensor)`
Scalar state such as Adam's `step` is carried over unchanged. An empty state (before the first
optimizer step) is fine: there is nothing to move, and Adam creates it at the new size on its first step.

The gradient is edited rather than dropped so that the optimizer step that follows densification
(the module calls the controller between backward and optimizer.step) still moves the surviving
Gaussians; new rows get zero gradient and zero moments, so Adam leaves them where they were put on
that step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from .gaussians import GaussianModel

RowFn = Callable[[str, Tensor], Tensor]


def create_optimizer(model: GaussianModel, lrs: dict[str, float], eps: float = 1e-15, extra_groups=()) -> torch.optim.Adam:
    """Adam with one param group per Gaussian parameter, each group's "name" the parameter's name.

    `lrs` must name every parameter (`model.param_names`, extra ones included) exactly once (a typo
    would otherwise silently train at a default rate). eps 1e-15 is 3DGS's: gradients of tiny Gaussians
    are tiny and must not be drowned by eps. `extra_groups`: further param groups (dicts with "params",
    "lr", "name", optionally "eps"), e.g. a renderer's own network, stepped by the same fused Adam.
    """
    names = set(model.param_names)
    if set(lrs) != names:
        raise KeyError(
            f"learning rates must be given for exactly {sorted(names)}; missing {sorted(names - set(lrs))}, "
            f"unknown {sorted(set(lrs) - names)}"
        )
    groups = [{"params": [getattr(model, name)], "lr": float(lrs[name]), "name": name} for name in model.param_names]
    taken = {g["name"] for g in groups}
    for g in extra_groups:
        if g.get("name") in taken or not g.get("name"):
            raise KeyError(f"extra param group names must be new and non-empty; got {g.get('name')!r}")
        taken.add(g["name"])
        groups.append(dict(g, params=list(g["params"])))
    # The fused implementation (one kernel over all parameters, CPU and CUDA) is ~10x faster than the
    # per-tensor loop on a CPU; measured 3.8 ms vs 37.5 ms for 200k Gaussians with SH degree 3.
    return torch.optim.Adam(groups, lr=0.0, eps=eps, fused=True)


def _unwrap(optimizer) -> Optimizer:
    # Lightning hands the module a LightningOptimizer wrapping the real one; edit the real one so that
    # its `state` dict is the object being changed even if the wrapper's shallow copy went stale.
    inner = getattr(optimizer, "_optimizer", None)
    return inner if isinstance(inner, Optimizer) else optimizer


def param_group(optimizer, name: str) -> dict:
    """The param group named `name` (e.g. to set the scheduled "means" learning rate)."""
    for group in _unwrap(optimizer).param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(f"the optimizer has no param group named {name!r}")


def check_optimizer_matches(model: GaussianModel, optimizer) -> None:
    """Raise unless every named group holds exactly the model's live parameter and its state fits it."""
    opt = _unwrap(optimizer)
    for group in opt.param_groups:
        name = group.get("name")
        if name not in model.param_names:
            continue  # a group of some other module sharing the optimizer: not ours to check
        param = getattr(model, name)
        if len(group["params"]) != 1 or group["params"][0] is not param:
            raise RuntimeError(f"param group {name!r} does not hold the model's live {name} parameter")
        for key, value in opt.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise RuntimeError(f"optimizer state {name}.{key} has shape {tuple(value.shape)}, parameter {tuple(param.shape)}")


@torch.no_grad()
def modify_parameters(
    model: GaussianModel,
    optimizer,
    param_fn: RowFn,
    state_fn: RowFn | None = None,
    names=None,
) -> None:
    """Edit parameters together with their gradients and optimizer state (module doc for the rules).

    param_fn(name, value) -> new value; state_fn(name, tensor) -> new grad / state tensor (defaults
    to param_fn: right for row selection, wrong for appending, where new moments must be zero).
    `names`: the parameters to edit (default all). All new values are computed before any is
    installed, so a failing fn leaves the model untouched.
    """
    opt = _unwrap(optimizer) if optimizer is not None else None
    state_fn = param_fn if state_fn is None else state_fn
    names = model.param_names if names is None else tuple(names)
    new_values, new_grads, new_states = {}, {}, {}
    for name in names:
        param = getattr(model, name)
        new_values[name] = param_fn(name, param.detach())
        if param.grad is not None:
            new_grads[name] = state_fn(name, param.grad)
        state = opt.state.get(param) if opt is not None else None
        if state:
            new_states[name] = {
                key: state_fn(name, value) if torch.is_tensor(value) and value.dim() > 0 and value.shape == param.shape else value
                for key, value in state.items()
            }
    swapped = model.replace_parameters(new_values)
    for name, (old, new) in swapped.items():
        if name in new_grads:
            new.grad = new_grads[name].to(new)
        if opt is None:
            continue
        for group in opt.param_groups:
            # In place: a LightningOptimizer shares these lists with the optimizer it wraps.
            group["params"][:] = [new if p is old else p for p in group["params"]]
        opt.state.pop(old, None)
        if name in new_states:
            opt.state[new] = new_states[name]
    if opt is not None:
        check_optimizer_matches(model, opt)


def append_gaussians(model: GaussianModel, optimizer, new: dict[str, Tensor]) -> None:
    """Append M Gaussians (every parameter given, pre-activation) with zero gradients and moments."""
    missing = set(model.param_names) - set(new)
    if missing:
        raise KeyError(f"append_gaussians needs every parameter; missing {sorted(missing)}")
    m = {int(t.shape[0]) for t in new.values()}
    if len(m) != 1:
        raise ValueError(f"new Gaussians disagree on their count: { {k: tuple(v.shape) for k, v in new.items()} }")
    m = m.pop()

    def with_values(name: str, t: Tensor) -> Tensor:
        return torch.cat([t, new[name].to(t)], dim=0)

    def with_zeros(name: str, t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros((m, *t.shape[1:]))], dim=0)

    modify_parameters(model, optimizer, with_values, with_zeros)


def keep_gaussians(model: GaussianModel, optimizer, mask: Tensor) -> None:
    """Keep the Gaussians where `mask` (N,) bool is True, with their gradients and moments; drop the rest."""
    if mask.dtype != torch.bool or mask.shape != (model.num_gaussians,):
        raise ValueError(f"mask must be a ({model.num_gaussians},) bool tensor, got {mask.dtype} {tuple(mask.shape)}")

    def select(name: str, t: Tensor) -> Tensor:
        return t[mask.to(t.device)]

    modify_parameters(model, optimizer, select)


def reset_state_rows(
    model: GaussianModel,
    optimizer,
    name: str,
    value_fn: Callable[[Tensor], Tensor] | None = None,
    mask: Tensor | None = None,
) -> None:
    """Give the rows in `mask` (all rows when None) of one parameter new values and a fresh start.

    value_fn(old values) -> new values for the whole parameter (None keeps the values); the masked rows
    take them, and their gradient and optimizer moments become zero, so the reset values are not
    pushed back by momentum (nor moved by this step's stale gradient).
    """
    n = model.num_gaussians
    rows = torch.ones(n, dtype=torch.bool) if mask is None else mask
    if rows.dtype != torch.bool or rows.shape != (n,):
        raise ValueError(f"mask must be a ({n},) bool tensor, got {rows.dtype} {tuple(rows.shape)}")

    def expand(t: Tensor) -> Tensor:
        return rows.to(t.device).view(-1, *([1] * (t.dim() - 1)))

    def new_values(_: str, t: Tensor) -> Tensor:
        return t if value_fn is None else torch.where(expand(t), value_fn(t).to(t), t)

    def zero_rows(_: str, t: Tensor) -> Tensor:
        return t.masked_fill(expand(t), 0.0)

    modify_parameters(model, optimizer, new_values, zero_rows, names=[name])


def exp_lr(
    step: int,
    lr_init: float,
    lr_final: float,
    max_steps: int,
    delay_steps: int = 0,
    delay_mult: float = 1.0,
) -> float:
    """Log-linear learning rate: lr_init at step 0, lr_final at max_steps and after, as 3DGS.

    3DGS's optional warm-up multiplier (delay_mult rising to 1 along a quarter sine over delay_steps)
    is off by default, as in its position schedule. 3DGS evaluates this at its 1-based iteration;
    the 0-based step is one step earlier, a difference of 1/max_steps of the log range.
    """
    if lr_init == 0.0 and lr_final == 0.0:
        return 0.0
    if lr_init <= 0.0 or lr_final <= 0.0:
        raise ValueError(f"exp_lr interpolates in log space: lr_init and lr_final must be > 0, got {lr_init}, {lr_final}")
    t = min(max(step / max_steps, 0.0), 1.0) if max_steps > 0 else 1.0
    lr = math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))
    if delay_steps > 0:
        ramp = min(max(step / delay_steps, 0.0), 1.0)
        lr *= delay_mult + (1.0 - delay_mult) * math.sin(0.5 * math.pi * ramp)
    return lr


__all__ = [
    "create_optimizer",
    "param_group",
    "check_optimizer_matches",
    "modify_parameters",
    "append_gaussians",
    "keep_gaussians",
    "reset_state_rows",
    "exp_lr",
]
