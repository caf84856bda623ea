"""Test helpers for several processes, importable by the ranks Lightning re-executes (repo root on sys.path).

`DumpState` is an ordinary callback, added the way a user adds one:
    --trainer.callbacks+=tests.ddp_probe.DumpState [--trainer.callbacks.folder DIR]
Each rank writes DIR/rank{R}.pt (default DIR: <experiment>/ddp_probe) at the end of training with
what it saw: the module's state_dict, the optimizer's state_dict, the generator state, per step the
image it trained on, the Gaussian count, the largest opacity, the density counters Lightning logged
and the number of all_reduce calls made during the step, and the checkpoint files this rank wrote.

The `*_worker` functions run under torch.multiprocessing (a 2-process gloo group, no Lightning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import lightning
import torch
import torch.distributed as dist


class DumpState(lightning.Callback):
    def __init__(self, folder: Optional[str] = None):
        self.folder = folder
        self.steps: list[dict] = []
        self.saved: list[str] = []
        self.start: dict = {}
        self._reduces = 0
        self._current: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        # Count all_reduce calls (internal/ddp.py calls torch.distributed.all_reduce through the module).
        original = dist.all_reduce

        def counting(*args, **kwargs):
            self._reduces += 1
            return original(*args, **kwargs)

        dist.all_reduce = counting
        # Record which rank actually writes checkpoint files.
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recording(checkpoint, path, storage_options=None):
            self.saved.append(str(path))
            return save(checkpoint, path, storage_options)

        io.save_checkpoint = recording
        self._restore = lambda: (setattr(dist, "all_reduce", original), setattr(io, "save_checkpoint", save))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and getattr(self, "_restore", None):
            self._restore()
            self._restore = None

    def on_train_start(self, trainer, pl_module) -> None:
        g = pl_module.gaussians
        self.start = {"global_step": trainer.global_step, "num_gaussians": g.num_gaussians,
                      "means": g.means.detach().clone(), "density_count": pl_module.density.count.detach().clone()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._reduces = 0
        self._current = {"step": trainer.global_step, "image": int(batch.index), "before": pl_module.gaussians.num_gaussians}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        g = pl_module.gaussians
        row = dict(self._current, after=g.num_gaussians, reduces=self._reduces,
                   max_opacity=float(g.get_opacities().max()))
        if row["after"] != row["before"]:
            row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("density/")})
        self.steps.append(row)

    def on_train_end(self, trainer, pl_module) -> None:
        folder = Path(self.folder) if self.folder else Path(trainer.default_root_dir) / "ddp_probe"
        folder.mkdir(parents=True, exist_ok=True)
        opt = pl_module.optimizers(use_pl_optimizer=False)
        torch.save({
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "optimizer": opt.state_dict(),
            "generator": pl_module.generator.get_state(),
            "steps": self.steps,
            "saved": self.saved,
            "start": self.start,
        }, folder / f"rank{trainer.global_rank}.pt")


class Diverge(lightning.Callback):
    """Nudges one Gaussian on rank 1 at `step`: the module's consistency check must catch it."""

    def __init__(self, step: int = 40):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.gaussians.opacities[0] += 1e-3


class NanOnRank(lightning.Callback):
    """Makes one process's loss NaN at `step` (its rendered colours become NaN; the Gaussians are left
    alone, so only that process sees a bad loss): every process must stop with the same error."""

    def __init__(self, step: int = 45, rank: int = 1):
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank != self.rank or trainer.global_step != self.step:
            return
        renderer = pl_module.renderer
        forward = renderer.forward

        def poisoned(*args, **kwargs):
            out = forward(*args, **kwargs)
            out.colors = out.colors * float("nan")
            return out

        renderer.forward = poisoned


# ---------------------------------------------------------------------------- torch.multiprocessing workers

def init_group(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def collectives_worker(rank: int, world: int, port: int, out: str) -> None:
    """Exercise internal/ddp.py's collectives with different data per rank; save what came out."""
    from internal import ddp
    from internal.gaussians import GaussianModel

    init_group(rank, world, port)
    try:
        calls = []
        original = dist.all_reduce

        def counting(t, *a, **k):
            calls.append(t.numel())
            return original(t, *a, **k)

        dist.all_reduce = counting
        torch.manual_seed(0)  # the same model on every rank
        module = torch.nn.Module()
        module.gaussians = GaussianModel(sh_degree=1)
        n = 7
        module.gaussians.replace_parameters({
            "means": torch.randn(n, 3), "quats": torch.randn(n, 4), "scales": torch.randn(n, 3),
            "opacities": torch.randn(n), "sh0": torch.randn(n, 1, 3), "shN": torch.randn(n, 3, 3)})
        module.mlp = torch.nn.Linear(3, 2)
        module.unused = torch.nn.Linear(2, 2)  # never gets a gradient anywhere
        module.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
        g = module.gaussians
        torch.manual_seed(100 + rank)  # different gradients and statistics on each rank
        for p in ddp.ordered_parameters(module):
            if p is g.sh0 and rank == 1:
                continue  # rank 1 has no gradient for sh0: counts as zeros
            if p is module.unused.weight or p is module.unused.bias:
                continue
            p.grad = torch.randn_like(p)
        local = {name: (p.grad.clone() if p.grad is not None else None) for name, p in module.named_parameters()}
        n_bad = ddp.average_gradients(module, bad_loss=(rank == 1))  # as if rank 1's loss were NaN
        grad_reduces = list(calls)
        averaged = {name: (p.grad.clone() if p.grad is not None else None) for name, p in module.named_parameters()}
        calls.clear()
        stats = [torch.rand(n) * (rank + 1), torch.randint(0, 5, (n,)).float()]
        stats_before = [s.clone() for s in stats]
        ddp.sum_across_processes(stats)
        stat_reduces = list(calls)
        checks = {"same": None, "differs": None}
        ddp.check_same_model(module, None, "test, identical")
        checks["same"] = "ok"
        with torch.no_grad():
            if rank == 1:
                g.means[3, 1] = torch.nextafter(g.means[3, 1], torch.tensor(1e9))  # one ulp
        try:
            ddp.check_same_model(module, None, "test, one ulp")
        except RuntimeError as e:
            checks["differs"] = str(e)
        torch.save({"local": local, "averaged": averaged, "grad_reduces": grad_reduces, "n_bad": n_bad, "stats_before": stats_before,
                    "stats": stats, "stat_reduces": stat_reduces, "checks": checks,
                    "order": [name for p in ddp.ordered_parameters(module) for name, q in module.named_parameters() if q is p]},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
