"""What a guidance loss is to the training step: an object the module calls once per step.

    guided = guidance(step, renderer, gaussians, background, generator)   # None when not due
    loss = photometric_loss + guided.loss

A guidance renders its own views through the module's renderer (so every backend and renderer works),
turns them into an extra loss term, and says which steps it is due at (`every`, `start_step`,
`end_step`). It holds no parameters of the module and nothing of it is in `state_dict()`: a checkpoint
carries its configuration only (`config()`), and any model it loads (a diffusion model, say) is loaded
again from its own files when training starts or resumes.

Random draws. Every draw (views, timesteps, noise) comes from a per-step generator seeded from ONE
draw of the module's shared generator (`step_generator`): the shared stream advances identically on
every process, so the processes keep identical generators (internal/ddp.py compares them) and a
resumed run continues the same stream; the per-step generator mixes in the process rank, so under
several processes each process guides a different view, as each trains on a different photo.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .. import ddp


class GuidanceError(Exception):
    """A guidance cannot run as configured (model folder missing or incomplete, extra not installed):
    one line naming what and the fix. The CLI prints it without a traceback."""


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar, already weighted: added to the photometric loss
    logs: dict[str, float] = field(default_factory=dict)  # logged as train/<key>


def linear_schedule(start_value: float, end_value: Optional[float], step: int, start: int, end: int) -> float:
    """start_value at `start`, end_value at `end`, linear in between, clamped outside; constant when
    end_value is None or the span is empty."""
    if end_value is None or end <= start:
        return float(start_value)
    f = min(max((step - start) / (end - start), 0.0), 1.0)
    return float(start_value + f * (end_value - start_value))


class Guidance(abc.ABC):
    """Base class: the step schedule, the per-step generator and the configuration record.

    Args:
        every: guide every this many steps (1 = every step).
        start_step, end_step: guide at steps start_step <= step < end_step (end_step None: until the
            end of training). Annealed quantities go linearly from their start value at start_step
            to their final value at end_step (or the trainer's max_steps).
    """

    def __init__(self, every: int = 1, start_step: int = 0, end_step: Optional[int] = None):
        if every < 1:
            raise ValueError(f"guidance every must be >= 1, got {every}")
        if start_step < 0 or (end_step is not None and end_step <= start_step):
            raise ValueError(f"guidance needs 0 <= start_step < end_step, got start_step={start_step}, end_step={end_step}")
        self.every = int(every)
        self.start_step = int(start_step)
        self.end_step = end_step
        self.max_steps: Optional[int] = None  # set by setup(): the end of annealing when end_step is None

    def due(self, step: int) -> bool:
        if step < self.start_step or (self.end_step is not None and step >= self.end_step):
            return False
        return (step - self.start_step) % self.every == 0

    @property
    def anneal_end(self) -> int:
        if self.end_step is not None:
            return int(self.end_step)
        return int(self.max_steps) if self.max_steps and self.max_steps > 0 else self.start_step

    def annealed(self, start_value: float, end_value: Optional[float], step: int) -> float:
        return linear_schedule(start_value, end_value, step, self.start_step, self.anneal_end)

    @staticmethod
    def step_generator(shared: torch.Generator) -> torch.Generator:
        """A CPU generator for this step's draws: one 62-bit draw of the shared generator (the same on
        every process) mixed with the process rank (see the module docstring)."""
        seed = int(torch.randint(0, 1 << 62, (1,), generator=shared))
        return torch.Generator().manual_seed((seed + 0x9E3779B97F4A7C15 * ddp.rank()) % (1 << 63))

    # ---------------------------------------------------------------- what subclasses provide
    def setup(self, scene, device: torch.device, max_steps: Optional[int] = None, output_dir=None) -> None:
        """Called once when fitting starts (after the module is on its device and a checkpoint, if any,
        is restored): load models, read the training cameras of `scene`."""
        self.max_steps = max_steps

    @abc.abstractmethod
    def __call__(self, step: int, renderer, gaussians, background: Tensor, generator: torch.Generator) -> Optional[GuidanceOutput]:
        """The weighted extra loss at this training step, or None when not due (then draw nothing)."""

    def config(self) -> dict[str, Any]:
        """{"class_path", "init_args"}: what a checkpoint keeps of a guidance (never its model weights)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": dict(getattr(self, "init_args", {}))}


__all__ = ["Guidance", "GuidanceError", "GuidanceOutput", "linear_schedule"]
