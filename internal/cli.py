"""LightningCLI for 3DGS: fit / validate / test / predict with an experiment folder per run.

    python main.py fit --data.path DATA -n lego [--output outputs] [--config a.yaml --config b.yaml]

`outputs/<name>/` holds config.yaml, cameras.json, checkpoints/ (step=S.ckpt at --save_steps and a
rolling last.ckpt every --checkpoint_every steps, each written to a temporary file and renamed),
point_cloud/iteration_S/point_cloud.ply, metrics/, renders/ and the TensorBoard logs.
`--ckpt_path last` resumes from outputs/<name>/checkpoints/last.ckpt.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from . import ddp  # several processes; importing it registers the "gaussian_ddp" strategy name
from .callbacks import AtomicCheckpointIO, SaveAtSteps, WriteCameras
from .checkpoints import read_checkpoint
from .errors import ConfigError, check
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
            # Parse errors raise (main() prints them as one line with a suggestion) instead of printing
            # the whole usage and exiting with status 2.
            parser_kwargs={"exit_on_error": False,
                           **{sub: {"exit_on_error": False} for sub in ("fit", "validate", "test", "predict")}},
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
        parser.add_argument("--appearance_group", type=Optional[str], default=None,
                            help="appearance group whose look PLY exports carry (AppearanceMLPRenderer; default: the first group)")
        parser.add_argument("--viewer", type=bool, nargs="?", const=True, default=False,
                            help="serve the web viewer on the model in training (internal/viewer/live.py)")
        parser.add_argument("--viewer_port", type=int, default=8080, help="port of the live viewer's page")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyperparameters here, before anything of ours runs: check
        # the file first, so that one that is not a checkpoint of ours gets our one-line error.
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and ckpt != "last" and Path(ckpt).is_file():
            read_checkpoint(ckpt)
        super()._parse_ckpt_path()

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
        if not ckpt and self.subcommand in ("validate", "test", "predict"):
            # Without a checkpoint Lightning would evaluate freshly initialised Gaussians.
            last = exp / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise ConfigError(f"{self.subcommand} needs trained Gaussians: pass --ckpt_path last (after "
                                 f"training {exp}) or --ckpt_path FILE.ckpt; {last} does not exist")
            print(f"[{self.subcommand}] no --ckpt_path given: using {last}")
            ckpt = "last"
        if ckpt == "last":
            last = exp / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
            elif self.subcommand == "fit":
                print(f"[resume] no {last} yet: starting a new run")
                cfg.ckpt_path = None
            else:
                raise ConfigError(f"--ckpt_path last, but {last} does not exist; train first or pass a checkpoint path")
        elif ckpt and not Path(ckpt).is_file():
            raise ConfigError(f"checkpoint {ckpt} does not exist")
        if cfg.get("ckpt_path"):
            # A file that is not a checkpoint of ours fails deep inside Lightning with a traceback.
            read_checkpoint(cfg.ckpt_path, sh_degree=cfg.model.sh_degree)
        if self.subcommand == "fit":
            check(all(s > 0 for s in cfg.save_steps), "--save_steps", f"must be positive steps, got {cfg.save_steps}")
            check(cfg.checkpoint_every > 0, "--checkpoint_every", f"must be > 0 steps, got {cfg.checkpoint_every}")
            check(1 <= cfg.viewer_port <= 65535, "--viewer_port", f"must be a port number 1..65535, got {cfg.viewer_port}")

    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        exp = Path(cfg.trainer.default_root_dir)
        extra = [
            ModelCheckpoint(dirpath=str(exp / "checkpoints"), save_last=True, save_top_k=0,
                            every_n_train_steps=cfg.checkpoint_every),
            SaveAtSteps(cfg.save_steps, cfg.get("appearance_group")),
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

    def before_fit(self) -> None:
        # Refuse an unknown export group now rather than at the first PLY export, hours later.
        group = self.config[self.subcommand].get("appearance_group") if self.subcommand else self.config.get("appearance_group")
        if group is not None and self.datamodule is not None:
            from .renderers import AppearanceMLPRenderer

            names = self.datamodule.scene.appearance_group_names if isinstance(self.model.renderer, AppearanceMLPRenderer) else []
            if group not in names:
                raise SystemExit(f"error: --appearance_group {group!r} is not an appearance group of this run "
                                 f"({', '.join(names[:10]) or 'its renderer has none: use --model.renderer AppearanceMLPRenderer'})")

    def after_fit(self) -> None:
        # Validation once more at the very end, unless the last step already ran it.
        if self.trainer.interrupted or self.trainer.datamodule is None or not self.datamodule.scene.val_ids:
            return
        interval = self.trainer.val_check_interval
        if isinstance(interval, int) and interval > 0 and self.trainer.global_step % interval == 0:
            return
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


class _DropAdvertisements(logging.Filter):
    """Lightning 2.6 logs a tip to install its cloud services (litlogger, litmodels) on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("litlogger" in msg or "litmodels" in msg)


def silence_advertisements() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
        logger.addFilter(_DropAdvertisements())


def parse_error_line(exc: Exception, argv: list[str]) -> str:
    """One line for a jsonargparse error: its first line, the closest known option when it names an
    unknown one, and where the options are listed."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    sub = next((a for a in argv if a in ("fit", "validate", "test", "predict")), "fit")
    hint = ""
    unknown = (re.findall(r"does not accept option '([\w.]+)'", message)
               or re.findall(r"unrecognized arguments: (--?[\w.]+)", message))
    unknown = ["--" + u.lstrip("-") for u in unknown]
    if unknown:
        close = difflib.get_close_matches(unknown[0], option_names(sub), n=1, cutoff=0.6)
        if close and close[0] != unknown[0]:
            hint = f" (did you mean {close[0]}?)"
    return f"{message}{hint}; `python main.py {sub} --help` lists every option (--print_config shows the values)"


def option_names(subcommand: str) -> list[str]:
    """The options of a subcommand, read from its --help (which builds the parser and instantiates nothing)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when args and a command line are both given
    try:
        with contextlib.redirect_stdout(out):
            GSCLI(args=[subcommand, "--help"])
    except SystemExit:
        pass
    except Exception:  # a suggestion is a courtesy: never fail the error message over it
        return []
    finally:
        sys.argv = argv
    return sorted(set(re.findall(r"(--[\w.]+)", out.getvalue())))


def main(args=None) -> None:
    """Entry point of main.py. Errors about the user's input end the run with their one-line message
    (exit status 1) instead of a traceback; GS_TRACEBACK=1 shows the traceback too."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .checkpoints import CheckpointError
    from .data.errors import DatasetError
    from .errors import ConfigError
    from .guidance import GuidanceError
    from .module import NonFiniteLossError
    from .splats import PlyFormatError
    from .viewer.app import PortInUseError

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    silence_advertisements()
    try:
        GSCLI(args=args)
    except ArgumentError as exc:  # an unknown option, a value of the wrong type, a bad config file
        if os.environ.get("GS_TRACEBACK") == "1":
            raise
        print(f"error: {parse_error_line(exc, list(sys.argv[1:] if args is None else args))}", file=sys.stderr)
        sys.exit(1)
    except (DatasetError, PlyFormatError, NonFiniteLossError, ConfigError, CheckpointError, GuidanceError,
            MisconfigurationException, PortInUseError) as exc:
        if os.environ.get("GS_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    # Several processes (internal/ddp.py): every rank that finished cleanly releases the process group,
    # which torch wants before exit (gloo may abort the interpreter's shutdown otherwise).
    ddp.shutdown()
