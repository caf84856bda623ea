"""LightningCLI for 3DGS: fit / validate / test / predict with an experiment folder per run.

    python main.py fit --data.path DATA -n lego [--output outputs] [--config a.yaml --config b.yaml]

`outputs/<name>/` holds config.yaml, cameras.json, checkpoints/ (step=S.ckpt at --save_steps and a
rolling last.ckpt every --checkpoint_every steps, each written to a temporary file and renamed),
point_cloud/iteration_S/point_cloud.ply, metrics/, renders/ and the TensorBoard logs.
`--ckpt_path last` resumes from outputs/<name>/checkpoints/last.ckpt.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from . import ddp  # several processes; importing it registers the "gaussian_ddp" strategy name
from .callbacks import AtomicCheckpointIO, SaveAtSteps, WriteCameras
from .data.datamodule import DataModule
from .module import GaussianSplatting

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ExperimentConfigSaver(SaveConfigCallback):
    """Writes config.yaml into the experiment folder (not the logger's version folder); a resumed
    run rewrites it with what it was started with. validate/test/predict write config_<stage>.yaml
    instead: their options (e.g. `verbose`) are not fit's, and config.yaml must stay usable for
    `fit --config outputs/<name>/config.yaml --ckpt_path last`."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (str enum)
        name = self.config_filename if stage == "fit" else f"{Path(self.config_filename).stem}_{stage}.yaml"
        self.parser.save(self.config, str(root / name), skip_unset=False, overwrite=True, multifile=self.multifile)
        self.already_saved = True


def experiment_name(name: Optional[str], data_path: Optional[str]) -> str:
    if name:
        return name
    if data_path:
        return Path(str(data_path)).resolve().name or "experiment"
    return "experiment"


class GSCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True):
        super().__init__(
            GaussianSplatting,
            DataModule,
            save_config_callback=ExperimentConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "max_steps": 30_000,
                "num_sanity_val_steps": 0,
                "check_val_every_n_epoch": None,
                "val_check_interval": 7_000,
                "log_every_n_steps": 50,
                "accelerator": "auto",
                "devices": 1,
            },
            seed_everything_default=42,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("-n", "--name", type=Optional[str], default=None,
                            help="experiment name: outputs go to <output>/<name>/ (default: the data folder's name)")
        parser.add_argument("--output", type=str, default="outputs", help="folder of experiment folders")
        parser.add_argument("--save_steps", type=list[int], default=[7_000, 30_000],
                            help="steps at which a checkpoint and a point_cloud.ply are kept")
        parser.add_argument("--checkpoint_every", type=int, default=1_000,
                            help="refresh checkpoints/last.ckpt every this many steps (for resuming)")
        parser.add_argument("--viewer", type=bool, nargs="?", const=True, default=False,
                            help="serve the web viewer on the model in training (internal/viewer/live.py)")
        parser.add_argument("--viewer_port", type=int, default=8080, help="port of the live viewer's page")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        exp = Path(cfg.output) / experiment_name(cfg.name, cfg.data.path)
        cfg.trainer.default_root_dir = str(exp)
        if cfg.trainer.logger in (None, True):
            cfg.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(exp), "name": "tensorboard", "version": ""},
            }
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            last = exp / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
            elif self.subcommand == "fit":
                print(f"[resume] no {last} yet: starting a new run")
                cfg.ckpt_path = None
            else:
                raise SystemExit(f"error: --ckpt_path last, but {last} does not exist; train first or pass a checkpoint path")
        elif ckpt and not Path(ckpt).is_file():
            raise SystemExit(f"error: checkpoint {ckpt} does not exist")

    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        exp = Path(cfg.trainer.default_root_dir)
        extra = [
            ModelCheckpoint(dirpath=str(exp / "checkpoints"), save_last=True, save_top_k=0,
                            every_n_train_steps=cfg.checkpoint_every),
            SaveAtSteps(cfg.save_steps),
            WriteCameras(),
        ]
        if cfg.get("viewer") and self.subcommand in (None, "fit"):
            from .viewer.live import LiveViewer  # viser is imported only when the viewer is asked for

            extra.append(LiveViewer(port=cfg.viewer_port))
        user = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        kwargs["callbacks"] = extra + (list(user) if isinstance(user, (list, tuple)) else [user])
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        kwargs["plugins"] = [AtomicCheckpointIO()] + (list(plugins) if isinstance(plugins, (list, tuple)) else [plugins] if plugins else [])
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        # Validation once more at the very end, unless the last step already ran it.
        if self.trainer.interrupted or self.trainer.datamodule is None or not self.datamodule.scene.val_ids:
            return
        interval = self.trainer.val_check_interval
        if isinstance(interval, int) and interval > 0 and self.trainer.global_step % interval == 0:
            return
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


def main(args=None) -> None:
    """Entry point of main.py. Errors about the user's input end the run with their one-line message
    (exit status 1) instead of a traceback; GS_TRACEBACK=1 shows the traceback too."""
    from .data.errors import DatasetError
    from .module import NonFiniteLossError
    from .splats import PlyFormatError
    from .viewer.app import PortInUseError

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        GSCLI(args=args)
    except (DatasetError, PlyFormatError, NonFiniteLossError, PortInUseError) as exc:
        if os.environ.get("GS_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    # Several processes (internal/ddp.py): every rank that finished cleanly releases the process group,
    # which torch wants before exit (gloo may abort the interpreter's shutdown otherwise).
    ddp.shutdown()
