"""Where the viewer's Gaussians come from: a loaded file (StaticSource) or a model in training (live.py)."""

from __future__ import annotations

from pathlib import Path

from ..loading import LoadedModel, sort_by_visibility


class ModelSource:
    """What the app asks of a model: a consistent snapshot to render, and a version that changes with it."""

    live = False
    # Gaussians ordered most visible first (loading.sort_by_visibility): moving frames may then draw a prefix.
    ordered_by_visibility = False

    def snapshot(self) -> LoadedModel:
        raise NotImplementedError

    def version(self) -> int:
        return 0

    def save_dir(self) -> Path:
        """Where screenshots, camera paths and videos go by default."""
        raise NotImplementedError

    def title(self) -> str:
        return "splat-lightning viewer"


class StaticSource(ModelSource):
    """A model loaded once (checkpoint, output folder or .ply), its Gaussians reordered most visible first."""

    ordered_by_visibility = True

    def __init__(self, model: LoadedModel, save_dir: Path | None = None):
        self.model = sort_by_visibility(model)
        self._save_dir = save_dir

    def snapshot(self) -> LoadedModel:
        return self.model

    def save_dir(self) -> Path:
        if self._save_dir is not None:
            return Path(self._save_dir)
        src = self.model.source
        # An output folder of ours (outputs/<name>/checkpoints/x.ckpt or .../point_cloud/iteration_S/x.ply)
        # keeps its viewer files beside its checkpoints; a loose .ply keeps them beside itself.
        for parent in list(src.parents)[:3]:
            if (parent / "checkpoints").is_dir() or (parent / "cameras.json").is_file():
                return parent / "viewer"
        return src.parent / "viewer"

    def title(self) -> str:
        step = f" · step {self.model.step}" if self.model.step is not None else ""
        return f"{self.model.source.name}{step}"


__all__ = ["ModelSource", "StaticSource"]
