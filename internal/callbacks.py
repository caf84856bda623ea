"""What training leaves on disk: atomic checkpoints, checkpoints + PLY at chosen steps, cameras.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic import atomic_write
from .splats import save_ply


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's folder, then os.replace onto the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


class SaveAtSteps(lightning.Callback):
    """At each step in `steps` (and at the end of training): checkpoints/step=S.ckpt and
    point_cloud/iteration_S/point_cloud.ply (INRIA layout, opens in other 3DGS viewers). With an
    appearance model the PLY carries `appearance_group`'s look (default: the first group) baked into
    the SH, as the renderer's export_splats gives it."""

    def __init__(self, steps: list[int], appearance_group: Optional[str] = None):
        self.steps = sorted(set(int(s) for s in steps))
        self.appearance_group = appearance_group

    def _save(self, trainer: lightning.Trainer, pl_module, with_ckpt: bool = True) -> None:
        step = trainer.global_step
        root = Path(trainer.default_root_dir)
        if with_ckpt:
            trainer.save_checkpoint(root / "checkpoints" / f"step={step}.ckpt")
        if trainer.is_global_zero:
            ply = root / "point_cloud" / f"iteration_{step}" / "point_cloud.ply"
            save_ply(pl_module.renderer.export_splats(pl_module.gaussians, self.appearance_group), ply)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step not in self.steps:
            self._save(trainer, pl_module, with_ckpt=False)


class WriteCameras(lightning.Callback):
    """cameras.json in the experiment folder, in the original 3DGS's layout (camera-to-world position
    and rotation, fx, fy), so that other 3DGS viewers can show the training cameras."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        scene = trainer.datamodule.scene
        cams = scene.cameras
        R = cams.R.double()
        centers = cams.camera_centers().double()
        entries = []
        for i in range(len(cams)):
            entries.append({
                "id": i,
                "img_name": Path(scene.image_names[i]).stem,
                "width": int(cams.width[i]),
                "height": int(cams.height[i]),
                "position": centers[i].tolist(),
                "rotation": R[i].T.tolist(),  # camera-to-world rotation
                "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]),
            })
        path = Path(trainer.default_root_dir) / "cameras.json"
        atomic_write(path, lambda f: f.write(json.dumps(entries, indent=1).encode()))
