"""Live view of training: `python main.py fit ... --viewer [--viewer_port 8080]`.

LiveViewer is a Lightning callback (internal/cli.py adds it). It serves the same page as viewer.py on the
model being trained. Renders never touch the parameters while a step runs: a TrainingGate lets a render
take a snapshot of the Gaussians only between two steps (a copy, then the render runs beside training),
so training waits at most for one copy, and a pause button holds training between steps.

Without a connected tab the cost per step is two uncontended lock round trips (bench/viewer.py
measures it); the server itself idles in its own thread.
"""

from __future__ import annotations

import copy
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import lightning
import torch

from ..loading import LoadedModel, read_cameras_json
from ..splats import Splats
from .sources import ModelSource


_SPLAT_FIELDS = ("means", "quats", "scales", "opacities", "sh0", "shN")


class TrainingGate:
    """Training steps and snapshots take turns; a waiting snapshot goes before the next step."""

    def __init__(self):
        self._cond = threading.Condition()
        self._in_step = False
        self._waiting = 0  # snapshots waiting for the step in progress to end
        self._snapshotting = 0
        self.paused = False
        self.closed = False
        self.steps = 0  # steps finished since the gate was made (the model's version)

    def begin_step(self) -> None:
        with self._cond:
            while not self.closed and (self.paused or self._waiting or self._snapshotting):
                self._cond.wait(timeout=0.5)
            self._in_step = True

    def end_step(self) -> None:
        with self._cond:
            self._in_step = False
            self.steps += 1
            if self._waiting:
                self._cond.notify_all()

    @contextmanager
    def between_steps(self):
        with self._cond:
            self._waiting += 1
            try:
                while self._in_step and not self.closed:
                    self._cond.wait(timeout=0.5)
            finally:
                self._waiting -= 1
            self._snapshotting += 1
        try:
            yield
        finally:
            with self._cond:
                self._snapshotting -= 1
                self._cond.notify_all()

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self.paused = bool(paused)
            self._cond.notify_all()

    def close(self) -> None:
        """Training ended (or failed): nothing may wait on the gate any more."""
        with self._cond:
            self.closed = True
            self.paused = False
            self._in_step = False
            self._cond.notify_all()


class TrainingSource(ModelSource):
    """The Gaussians of a GaussianSplatting module in training, snapshotted between steps."""

    live = True

    def __init__(self, trainer, pl_module, gate: TrainingGate):
        self.trainer = trainer
        self.module = pl_module
        self.gate = gate
        self.refresh_seconds = 1.0
        self.loss: torch.Tensor | None = None
        self._snap: LoadedModel | None = None
        self._snap_steps = -1
        self._snap_lock = threading.Lock()
        self._cameras = None
        self._started = time.monotonic()
        self._start_step = int(trainer.global_step)

    def _cameras_json(self):
        if self._cameras is None:
            self._cameras = read_cameras_json(Path(self.trainer.default_root_dir) / "cameras.json") or []
        return self._cameras or None

    def snapshot(self) -> LoadedModel:
        with self._snap_lock:
            if self._snap is not None and self._snap_steps == self.gate.steps:
                return self._snap
            with self.gate.between_steps():
                steps = self.gate.steps
                g = self.module.gaussians
                k1 = (int(g.active_sh_degree) + 1) ** 2 - 1
                with torch.no_grad():
                    splats = Splats(
                        means=g.means.detach().clone(), quats=g.quats.detach().clone(),
                        scales=g.scales.detach().clone(), opacities=g.opacities.detach().clone(),
                        sh0=g.sh0.detach().clone(), shN=g.shN.detach()[:, :k1].clone(),
                    )
                    # Other per-Gaussian parameters (an appearance model's features), row for row.
                    n = g.means.shape[0]
                    extras = {name: p.detach().clone() for name, p in g.named_parameters(recurse=False)
                              if name not in _SPLAT_FIELDS and p.dim() >= 1 and p.shape[0] == n}
                    renderer = self.module.renderer
                    groups = list(getattr(renderer, "group_names", None) or [])
                    renderer = copy.deepcopy(renderer) if groups else None
                    background = tuple(float(v) for v in self.module.scene_background.detach().cpu())
                step = int(self.trainer.global_step)
            self._snap = LoadedModel(splats=splats, source=Path(self.trainer.default_root_dir), step=step,
                                     cameras=self._cameras_json(), background=background, renderer=renderer,
                                     appearance_groups=groups, extras=extras)
            self._snap_steps = steps
            return self._snap

    def version(self) -> int:
        return self.gate.steps

    def save_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) / "viewer"

    def title(self) -> str:
        return f"{Path(self.trainer.default_root_dir).name} · training"

    def status_line(self) -> str:
        step = int(self.trainer.global_step)
        elapsed = time.monotonic() - self._started
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        loss = f"{float(self.loss):.4f}" if self.loss is not None else "–"
        state = "**paused**" if self.gate.paused else f"{rate:.1f} steps/s"
        return (f"Step {step:,} / {self.trainer.max_steps:,} · loss {loss} · "
                f"{self.module.gaussians.num_gaussians:,} Gaussians · {state}")

    def build_gui(self, session) -> "LivePanel":
        return LivePanel(self, session)

    def clients_changed(self, count: int) -> None:
        if count == 0 and self.gate.paused:
            print("[viewer] the last tab closed while training was paused: resuming training")
            self.gate.set_paused(False)


class LivePanel:
    def __init__(self, source: TrainingSource, session):
        self.source = source
        gui = session.client.gui
        with gui.add_folder("Training"):
            self.pause = gui.add_button("Pause training" if not source.gate.paused else "Resume training")
            self.refresh = gui.add_slider("Refresh every (s)", 0.2, 10.0, 0.1, source.refresh_seconds,
                                          hint="how often the view follows training while the camera is still")
        self.pause.on_click(lambda _e: self._toggle())
        self.refresh.on_update(lambda _e: setattr(source, "refresh_seconds", float(self.refresh.value)))

    def _toggle(self) -> None:
        gate = self.source.gate
        gate.set_paused(not gate.paused)
        self.pause.label = "Resume training" if gate.paused else "Pause training"

    def status_line(self) -> str:
        return self.source.status_line()


class LiveViewer(lightning.Callback):
    """Serves the viewer on the model in training (global rank 0 only).

    Args:
        port: port of the page (8080). host: interface to listen on (0.0.0.0: all).
        refresh_seconds: how often a still view follows training.
    """

    def __init__(self, port: int = 8080, host: str = "0.0.0.0", refresh_seconds: float = 1.0,
                 port_option: str = "--viewer_port"):
        self.port = int(port)
        self.host = host
        self.refresh_seconds = float(refresh_seconds)
        self.port_option = port_option
        self.gate = TrainingGate()
        self.app = None
        self.source: TrainingSource | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        from .app import check_port_free

        if getattr(stage, "value", stage) == "fit" and trainer.is_global_zero:
            check_port_free(self.host, self.port, self.port_option)  # fail before training, not after

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from .app import ViewerApp, ViewerOptions

        self.source = TrainingSource(trainer, pl_module, self.gate)
        self.source.refresh_seconds = self.refresh_seconds
        # On a CPU, renders run beside training's own threads: one thread each keeps them from fighting
        # over the cores (OpenMP barriers stall badly when oversubscribed). A GPU run renders on the GPU.
        threads = 1 if pl_module.gaussians.means.device.type == "cpu" else None
        self.app = ViewerApp(self.source, ViewerOptions(host=self.host, port=self.port, port_option=self.port_option,
                                                        render_threads=threads))
        self.app.start()
        print(f"[viewer] watching training at {self.app.url()}", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.app is not None:
            self.gate.begin_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.app is not None:
            if self.source is not None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.source.loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
            self.gate.end_step()

    def teardown(self, trainer, pl_module, stage) -> None:
        self.gate.close()
        if self.app is not None:
            self.app.stop()
            self.app = None
            print("[viewer] training ended: the live viewer stopped (open the result with viewer.py)", flush=True)


__all__ = ["LiveViewer", "TrainingGate", "TrainingSource"]
