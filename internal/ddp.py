"""Training on several processes (GPUs, CPU processes, machines) with one identical Gaussian model on each.

    python main.py fit ... --trainer configs/ddp.yaml --trainer.devices N [--trainer.num_nodes M]

Why not Lightning's "ddp". torch's DistributedDataParallel registers a gradient hook on each parameter
once, at wrapping time, and assumes parameters keep their identity and shape. Densification installs
new parameters of another shape every few hundred steps (internal/gaussians.py explains why), so a
wrapped model would keep reducing stale tensors. `GaussianDDPStrategy` is Lightning's DDPStrategy
(same launcher re-executing the script per rank, same process group - gloo on CPU, nccl on CUDA -,
rank-0 checkpoint writing, barriers, num_nodes) minus the wrapping. What DDP would have done is done
here, explicitly, by the module at fixed points of its training step:

  - `average_gradients(module)`: after backward, every trainable parameter's gradient (the Gaussians in
    GaussianModel.PARAM_NAMES order, then any other, e.g. an appearance MLP) is averaged across
    processes through ONE flat all_reduce. Parameters are looked up at that moment, so parameters
    replaced by densification are simply the ones found: nothing can go stale.
  - `sum_across_processes(tensors)`: DensityController.reduce_fn. The screen-space statistics each
    process gathered over its own images are summed (one flat all_reduce) right before a
    densification decision; with identically seeded generators every process then makes the same
    clone / split / prune decisions and draws the same split samples.
  - `check_same_model(module, optimizer, where)`: an exact checksum of the bits of every parameter,
    buffer (except the per-process density statistics), optimizer state tensor and the training
    generator's state, gathered from all ranks and compared; a RuntimeError naming the ranks and the
    differing tensors otherwise. The module runs it at the start, after every densification or opacity
    reset, and at the end of training.
  - `scale_optimizer_for_batch(trainer, optimizer)`: a step now averages N images (N processes), so Adam
    gets lr x sqrt(N), eps / sqrt(N) and betas^N (gsplat's rule for batch x world size; the strategy's
    lr_scaling="none" keeps the one-image values), re-derived when a run resumes under another N.
  - checkpoints (written by rank 0 only, by Lightning): `globalize_density_stats` stores the statistics
    summed over processes (max for screen radii); `localize_density_stats` gives them to rank 0 only
    when a checkpoint is loaded, so their sum over processes is the same under any number of processes
    (a DDP checkpoint resumes on one process and vice versa).

All functions are no-ops on a single process.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor

from .density import STAT_NAMES
from .gaussians import GaussianModel

STRATEGY_NAME = "gaussian_ddp"


class GaussianDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy without the DistributedDataParallel wrapper (see the module docstring).

    Args are DDPStrategy's; `process_group_backend` None picks gloo on CPU and nccl on CUDA. Only the
    "popen" start method (re-executing the script per rank) is accepted: spawn/fork would pickle or
    fork a module that holds a torch.Generator and a data module with decoding threads.

    lr_scaling: how Adam follows the batch of N images (one per process) that each step now averages
        (`scale_optimizer_for_batch`): "sqrt" (default, as gsplat does for batch x world size) or
        "none" (the one-image settings, unchanged).
    """

    strategy_name = STRATEGY_NAME

    def __init__(self, *args, start_method: str = "popen", lr_scaling: Literal["sqrt", "none"] = "sqrt", **kwargs):
        if start_method != "popen":
            raise ValueError(f"{type(self).__name__} runs with start_method='popen' only (got {start_method!r}); "
                             "spawn/fork are not supported")
        for key in ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper", "model_averaging_period"):
            if kwargs.get(key) is not None:
                raise ValueError(f"{type(self).__name__} does not wrap the model in DistributedDataParallel, "
                                 f"so {key} has no effect; remove it")
        if lr_scaling not in ("sqrt", "none"):
            raise ValueError(f"lr_scaling must be 'sqrt' or 'none', got {lr_scaling!r}")
        self.lr_scaling = lr_scaling
        super().__init__(*args, start_method=start_method, **kwargs)

    def configure_ddp(self) -> None:
        # Lightning calls this at fit set-up to wrap the module; the module synchronises gradients itself.
        pass


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(STRATEGY_NAME, GaussianDDPStrategy,
                              description="DDP without the DistributedDataParallel wrapper (Gaussian splatting)")


# ---------------------------------------------------------------------------- process group

def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shutdown() -> None:
    """Destroy the default process group, if any (call on every rank after a successful run only: a
    rank that failed may leave the others inside a collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- gradients

def ordered_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters in the order every process flattens them: the Gaussians in
    `param_names` order (extra per-Gaussian ones included), then every other trainable parameter in
    registration order."""
    first: list[torch.nn.Parameter] = []
    gaussians = getattr(module, "gaussians", None)
    if isinstance(gaussians, GaussianModel):
        first = [getattr(gaussians, name) for name in gaussians.param_names]
    seen = {id(p) for p in first}
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
    return [p for p in first if p.requires_grad] + rest


@torch.no_grad()
def average_gradients(module: torch.nn.Module, bad_loss: bool = False) -> int:
    """Average the .grad of every trainable parameter of `module` across processes (in place), and
    return how many processes reported a non-finite loss (`bad_loss`; 0 or 1 on one process).

    One flat all_reduce per gradient dtype (one in practice): gradients are copied into a buffer in
    `ordered_parameters` order, followed by one flag per parameter (1 = this process has a gradient).
    After the sum the buffer is divided by the world size, as DistributedDataParallel does; a
    parameter whose gradient is None on some processes counts zeros for them, and one whose gradient
    is None on every process keeps None (Adam then skips it). The result is the same on every process.

    The loss flag rides in the first buffer, so every process learns in the same collective that some
    process diverged and all of them can stop together (instead of the healthy ones waiting in the next
    collective for a process that has exited).
    """
    w = world_size()
    if w == 1:
        return int(bad_loss)
    params = ordered_parameters(module)
    if not params:
        flag = torch.tensor([float(bad_loss)])
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag.item())
    buckets: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault(p.dtype, []).append(i)
    n_bad = 0
    for b, (dtype, idx) in enumerate(buckets.items()):
        parts = [(params[i].grad if params[i].grad is not None else torch.zeros_like(params[i])).reshape(-1) for i in idx]
        flags = [params[i].grad is not None for i in idx] + ([bool(bad_loss)] if b == 0 else [])
        flat = torch.cat(parts + [torch.tensor(flags, dtype=dtype, device=params[idx[0]].device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        n_grad = flat.numel() - len(flags)
        counts = flat[n_grad:].tolist()  # how many processes had a gradient, per parameter (+ the loss flag)
        had = counts[:len(idx)]
        if b == 0:
            n_bad = int(round(counts[-1]))
        flat = flat[:n_grad].div_(w)
        offset = 0
        for j, i in enumerate(idx):
            p = params[i]
            part = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if had[j] == 0.0:
                continue
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.copy_(part)
    return n_bad


# ---------------------------------------------------------------------------- batch size

def scale_optimizer_for_batch(trainer, optimizer) -> int:
    """Set Adam's hyper-parameters for the N images (N = world size) one step averages, and return N.

    With lr_scaling "sqrt" (GaussianDDPStrategy's default; gsplat's rule for batch x world size,
    Malladi et al.'s square-root scaling for Adam): lr x sqrt(N), eps / sqrt(N), and betas b -> b^N
    (N one-image steps of momentum decay in one step; gsplat's 1 - N(1-b) is its first-order form
    and turns negative for N >= 10). With "none", or on one process, N = 1: the one-image settings.

    Each param group records the N it is set for ("images_per_step"), so the change is relative and
    exact: a checkpoint written under any number of processes is rescaled to the current one when
    training resumes (call this after the optimizer state is restored, i.e. in on_train_start).
    The scheduled position learning rate is multiplied by `lr_factor(group)` each step.
    """
    mode = getattr(getattr(trainer, "strategy", None), "lr_scaling", "sqrt")
    n = world_size() if mode == "sqrt" else 1
    opt = getattr(optimizer, "_optimizer", optimizer)
    for group in opt.param_groups:
        old = int(group.get("images_per_step", 1))
        if old != n:
            r = n / old
            group["lr"] = group["lr"] * math.sqrt(r)
            group["eps"] = group["eps"] / math.sqrt(r)
            group["betas"] = tuple(float(b) ** r for b in group["betas"])
        group["images_per_step"] = n
    return n


def lr_factor(group: dict) -> float:
    """The learning-rate multiplier `scale_optimizer_for_batch` gave this param group (1.0 on one image)."""
    return math.sqrt(group.get("images_per_step", 1))


# ---------------------------------------------------------------------------- density statistics

@torch.no_grad()
def sum_across_processes(tensors: list[Tensor]) -> None:
    """In-place sum of same-dtype tensors over all processes through one flat all_reduce
    (DensityController.reduce_fn). No-op on one process."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def _density_keys(checkpoint: dict, module) -> dict[str, str]:
    prefix = next((n + "." for n, m in module.named_modules() if m is getattr(module, "density", None)), None)
    if prefix is None:
        return {}
    sd = checkpoint.get("state_dict", {})
    return {name: prefix + name for name in STAT_NAMES if prefix + name in sd}


@torch.no_grad()
def globalize_density_stats(checkpoint: dict, module) -> None:
    """Replace this process's density statistics in `checkpoint` by their total over processes
    (sums for gradients and counts, max for screen radii). Called on every rank while the checkpoint
    is built (Lightning builds it on every rank and writes rank 0's)."""
    if world_size() == 1:
        return
    keys = _density_keys(checkpoint, module)
    if set(keys) != set(STAT_NAMES):
        return
    sd = checkpoint["state_dict"]
    dev = module.density.grad_accum.device
    summed = [sd[keys["grad_accum"]].detach().clone().to(dev), sd[keys["count"]].detach().clone().to(dev)]
    sum_across_processes(summed)
    radii = sd[keys["max_radii"]].detach().clone().to(dev)
    dist.all_reduce(radii, op=dist.ReduceOp.MAX)
    for name, t in zip(STAT_NAMES, summed + [radii]):
        sd[keys[name]] = t.to(sd[keys[name]].device)


@torch.no_grad()
def localize_density_stats(checkpoint: dict, module) -> None:
    """On loading: rank 0 takes the checkpoint's (total) statistics, the other ranks start from zero,
    so the totals the next decision sums are the checkpoint's whatever the number of processes."""
    if rank() == 0:
        return
    sd = checkpoint.get("state_dict", {})
    for key in _density_keys(checkpoint, module).values():
        sd[key] = torch.zeros_like(sd[key])


# ---------------------------------------------------------------------------- consistency

_P = (1 << 31) - 1  # prime modulus of the weighted sums
_K = 1024  # words per row of the grid the bits are summed over


def _words(t: Tensor) -> Tensor:
    """The bits of `t` as a 1-D int32 tensor (a view for 4- and 8-byte dtypes, a widening copy else)."""
    x = t.detach().contiguous().reshape(-1)
    if x.is_complex():
        x = torch.view_as_real(x).reshape(-1)
    if x.dtype == torch.bool:
        return x.to(torch.int32)
    size = x.element_size()
    if size % 4 == 0:
        return x.view(torch.int32)
    return (x.view(torch.int16) if size == 2 else x.view(torch.uint8)).to(torch.int32)


def _weights(n: int, salt: int, device) -> Tensor:
    return (torch.arange(n, dtype=torch.int64, device=device) * 7919 + salt) % 1021 + 1  # in [1, 1021]


@torch.no_grad()
def bit_checksum(t: Tensor) -> tuple[int, int, int]:
    """Exact checksum of the bits of `t`: (number of 32-bit words, their sum, a position-weighted sum).

    The words are laid out as rows of 1024 and summed per row and per column in int64 (exact, so
    independent of reduction order and device); the sums are then combined with fixed weights modulo
    a prime. Any change of one word changes the plain sum; a swap of two different words changes the
    weighted one unless their row and column weights happen to balance. Two passes over the data:
    fast enough to run at every densification on millions of Gaussians.
    """
    w = _words(t)
    n = w.numel()
    r = n // _K
    main = w[: r * _K].view(r, _K)
    rows = main.sum(1, dtype=torch.int64)  # |row| < 2^41
    cols = main.sum(0, dtype=torch.int64)  # |col| < 2^53 for up to 2^32 words
    tail = w[r * _K:]
    if tail.numel():
        rows = torch.cat([rows, tail.sum(dtype=torch.int64).view(1)])
        cols[: tail.numel()] += tail.to(torch.int64)
    total = rows.sum()  # exact: |total| < 2^63 for up to 2^32 words
    # Products < 2^31 * 2^10; up to 2^22 rows: the sums stay below 2^63.
    weighted = ((rows % _P) * _weights(rows.numel(), 17, rows.device)).sum() + ((cols % _P) * _weights(_K, 4099, cols.device)).sum()
    return n, int(total), int(weighted % _P)


def model_checksums(module, optimizer=None) -> dict[str, tuple]:
    """Checksums of everything that must be identical on every process: parameters and buffers
    (the density statistics excepted: they are per process until summed), optimizer state tensors
    and hyper-parameters that change during training (lr), and the training generator's state."""
    stats = {id(getattr(module.density, n)) for n in STAT_NAMES} if hasattr(module, "density") else set()
    out: dict[str, tuple] = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if id(t) not in stats:
            out[name] = bit_checksum(t)
    if optimizer is not None:
        opt = getattr(optimizer, "_optimizer", optimizer)
        for gi, group in enumerate(opt.param_groups):
            gname = group.get("name", str(gi))
            hyper = [group.get("lr", 0.0), group.get("eps", 0.0), *group.get("betas", ())]
            out[f"optimizer.{gname}.hyperparameters"] = bit_checksum(torch.tensor([float(h) for h in hyper], dtype=torch.float64))
            for pi, p in enumerate(group["params"]):
                for key, value in sorted(opt.state.get(p, {}).items()):
                    if torch.is_tensor(value):
                        out[f"optimizer.{gname}[{pi}].{key}"] = bit_checksum(value)
    gen = getattr(module, "generator", None)
    if isinstance(gen, torch.Generator):
        out["generator"] = bit_checksum(gen.get_state())
    return out


def check_same_model(module, optimizer=None, where: str = "") -> None:
    """Raise RuntimeError on every rank unless all ranks hold the same Gaussian count and the same
    checksums (`model_checksums`). A collective: every rank must call it at the same point."""
    w = world_size()
    if w == 1:
        return
    gaussians = getattr(module, "gaussians", None)
    local = {"count": gaussians.num_gaussians if gaussians is not None else -1,
             "sums": model_checksums(module, optimizer)}
    everyone: list[Optional[dict]] = [None] * w
    dist.all_gather_object(everyone, local)
    ref = everyone[0]
    problems = []
    for r, other in enumerate(everyone[1:], start=1):
        if other["count"] != ref["count"]:
            problems.append(f"rank {r} holds {other['count']} Gaussians, rank 0 holds {ref['count']}")
        names = sorted(set(ref["sums"]) | set(other["sums"]))
        differ = [n for n in names if ref["sums"].get(n) != other["sums"].get(n)]
        if differ:
            shown = ", ".join(differ[:12]) + (f" and {len(differ) - 12} more" if len(differ) > 12 else "")
            problems.append(f"rank {r} differs from rank 0 in {shown}")
    if problems:
        raise RuntimeError(
            f"the processes no longer hold the same Gaussian model ({where}): " + "; ".join(problems)
            + ". Every process must average gradients, sum densification statistics and draw from "
            "identically seeded generators; training stopped rather than continue with diverged copies."
        )


def check_strategy(trainer) -> None:
    """Refuse a multi-process strategy that wraps the module (e.g. Lightning's "ddp"): its
    DistributedDataParallel would keep reducing the parameters densification replaced."""
    if world_size() == 1 or trainer is None:
        return
    if trainer.strategy.model is not trainer.lightning_module:
        raise RuntimeError(
            f"strategy {type(trainer.strategy).__name__} wraps the module in "
            f"{type(trainer.strategy.model).__name__}, which cannot follow Gaussians whose number changes at "
            f"densification. Use --trainer configs/ddp.yaml (strategy {GaussianDDPStrategy.__module__}."
            f"{GaussianDDPStrategy.__name__}, or --trainer.strategy {STRATEGY_NAME})."
        )


__all__ = [
    "GaussianDDPStrategy",
    "STRATEGY_NAME",
    "world_size",
    "rank",
    "shutdown",
    "ordered_parameters",
    "average_gradients",
    "sum_across_processes",
    "scale_optimizer_for_batch",
    "lr_factor",
    "globalize_density_stats",
    "localize_density_stats",
    "bit_checksum",
    "model_checksums",
    "check_same_model",
    "check_strategy",
]
