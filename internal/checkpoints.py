"""Reading a checkpoint of ours with errors a user can act on.

Lightning loads `--ckpt_path` deep inside `trainer.fit/test`, where a file that is not a checkpoint
surfaces as pickle's "Unsupported operand 103" and a checkpoint of another project as a key error, each
with a long traceback. `read_checkpoint` checks the file first and raises CheckpointError, one line
naming the file and the fix: not a file, not a PyTorch checkpoint, a checkpoint without our Gaussian
model (another project's), Gaussians with NaN/inf values, or an SH degree other than the one asked for.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Optional

import torch

GAUSSIAN_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")  # the INRIA six a model always has
GAUSSIAN_KEYS = tuple(f"gaussians.{k}" for k in GAUSSIAN_NAMES)  # their state_dict keys
FIX = "pass a checkpoint that training wrote (outputs/<name>/checkpoints/last.ckpt or step=S.ckpt), or --ckpt_path last"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used. `str(e)` is one line naming the file and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def read_checkpoint(path, sh_degree: Optional[int] = None, fix: str = FIX, weights_only: bool = False) -> dict:
    """Load `path` on the CPU (memory-mapped) and check it holds a finite Gaussian model of ours.

    sh_degree: when given, the checkpoint's maximum SH degree must be this one.
    fix: what the messages tell the user to do instead (tools other than training say it their way).
    weights_only: unpickle tensors, containers and plain values only (tools that open files from anywhere:
        a checkpoint cannot run code in them; ours hold nothing else).
    Returns the checkpoint dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist; {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
    except Exception:  # mmap needs torch's zip format: try the legacy format before giving up
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as exc:
            text = " ".join(str(exc).split())
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if weights_only and found:  # a real pickle that names code to run
                raise CheckpointError(f"{path}: refers to Python code ({found.group(1).rstrip('.,')}) besides tensors and "
                                      f"plain values, which could run on loading, so it is not loaded; {fix}") from None
            found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
            reason = f"UnpicklingError: {found.group(1)}; the file may be truncated or corrupt" if found else _reason(exc)
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason}); {fix}") from None
        except Exception as exc:  # any unreadable file: pickle, zip or torch errors alike
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_reason(exc)}); {fix}") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or any(k not in state for k in GAUSSIAN_KEYS):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: a PyTorch checkpoint, but not one of this trainer (no Gaussian model in it; "
                              f"top-level keys: {keys}); {fix}")
    for key in GAUSSIAN_KEYS:
        t = state[key]
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            step = ckpt.get("global_step", "?")
            raise CheckpointError(
                f"{path}: {bad} non-finite values (NaN/inf) in {key} (step {step}); this checkpoint cannot be trained or "
                "rendered: resume from an earlier one (checkpoints/step=S.ckpt) or start a new run")
    if sh_degree is not None:
        degree = round(((state["gaussians.shN"].shape[1] + 1) ** 0.5)) - 1
        if degree != sh_degree:
            raise CheckpointError(f"{path}: holds SH degree {degree} but --model.sh_degree is {sh_degree}; "
                                  f"pass --model.sh_degree {degree} (or the run's config.yaml)")
    return ckpt


def _reason(exc: Exception) -> str:
    """The first sentence of an exception, short (torch's zip errors run to several sentences)."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].rstrip(".")
    if len(first) > 150:
        first = first[:150] + "..."
    return f"{type(exc).__name__}: {first}; the file may be truncated or corrupt" if first else type(exc).__name__


__all__ = ["CheckpointError", "read_checkpoint", "GAUSSIAN_KEYS"]
