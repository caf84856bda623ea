"""Test helper for SDS under several processes, importable by the ranks Lightning re-executes:

    --trainer.callbacks+=tests.sds_probe.RecordGuidance

Each rank writes <experiment>/sds_probe/rank{R}.pt at the end of training: per guided step, the step
and the timesteps and camera positions its guidance drew.
"""

from __future__ import annotations

from pathlib import Path

import lightning
import torch


class RecordGuidance(lightning.Callback):
    def __init__(self):
        self.rows: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        guidance = pl_module.guidance
        draw = guidance.draw

        def recording(step, g):
            cams, t, noise = draw(step, g)
            self.rows.append({"step": step, "t": t.clone(), "centers": cams.camera_centers().clone()})
            return cams, t, noise

        guidance.draw = recording

    def on_train_end(self, trainer, pl_module) -> None:
        folder = Path(trainer.default_root_dir) / "sds_probe"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"rank": trainer.global_rank, "rows": self.rows}, folder / f"rank{trainer.global_rank}.pt")
