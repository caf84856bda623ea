"""The LightningDataModule: a scene folder in, one `Batch` (one image) per step out.

    python main.py fit --data.path DATA                                   # COLMAP or Blender, detected
    python main.py fit --data.path DATA --data.params.colmap.mask_dir masks
    python main.py fit --data.path DATA --data.params.train_max_num_images_to_cache 1024

Training order: a permutation of the train images drawn from (seed, epoch), the same on every process.
Under DDP the permutation is padded by repeating its first elements up to a multiple of the world
size W, and process r takes elements r, r+W, r+2W, ...: each epoch the processes see disjoint shares
of equal length (equal lengths keep collective operations in step). The datasets are IterableDatasets,
so Lightning never swaps in its own DistributedSampler; `use_distributed_sampler` can stay at its
default. Validation and test yield every image of their split, in order, on every process.

Images are decoded by a background thread pool (see cache.py), so DataLoader worker processes are not
used (they would each hold their own cache).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from . import load_scene
from .cache import ImageStream
from .cameras import Cameras
from .params import BlenderParams, ColmapParams, DataParams
from .scene import Scene


def _quiet_len_warning() -> None:
    # Lightning warns that an IterableDataset with __len__ may over-count under multi-process
    # loading; these loaders never use worker processes (num_workers=0), so the length is exact.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


_quiet_len_warning()

__all__ = ["Batch", "DataModule", "DataParams", "ColmapParams", "BlenderParams", "ImageDataset"]


@dataclass
class Batch:
    """One image and its camera. Tensors stay uint8/bool: the trainer converts what it uses."""

    camera: Cameras  # length 1
    image: torch.Tensor  # (H,W,3) uint8 RGB; Blender: composited on the configured background
    # (H,W) uint8, Blender's alpha, else None. For random-background training: the premultiplied
    # colour is image - 255 * background * (1 - alpha / 255), to be composited on any other colour.
    alpha: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]  # (H,W) bool, True = use the pixel (user mask & undistortion), or None
    name: str
    index: int  # index of the image in the Scene

    def to(self, device, non_blocking: bool = False) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(self.camera.to(device, non_blocking), mv(self.image), mv(self.alpha), mv(self.mask), self.name, self.index)


def _single(items: list) -> Batch:
    """Collate for batch size 1: images of different sizes pass through untouched."""
    if len(items) != 1:
        raise ValueError(f"the data module yields one image per step, got a batch of {len(items)}")
    return items[0]


def seed_from_env(seed: Optional[int]) -> int:
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def epoch_order(ids: list[int], seed: int, epoch: int, world_size: int = 1, rank: int = 0) -> list[int]:
    """This process's share of the shuffled order of `ids` for `epoch` (see the module docstring)."""
    if not ids:
        return []
    perm = np.random.default_rng([seed, epoch]).permutation(np.asarray(ids, dtype=np.int64))
    w = max(1, int(world_size))
    pad = (-len(perm)) % w
    if pad:
        perm = np.concatenate([perm, np.resize(perm, pad)])
    return perm[rank::w].tolist()


class ImageDataset(IterableDataset):
    """Images `ids` of `scene` as `Batch`es, through a capped `ImageStream`.

    shuffle=False: `ids` in order. shuffle=True: `epoch_order(ids, seed(), epoch(), *world())`, where the
    callables are read at the start of each pass (the epoch falls back to a count of passes).
    """

    def __init__(
        self,
        scene: Scene,
        ids: list[int],
        max_num_images_to_cache: int = -1,
        shuffle: bool = False,
        seed: Callable[[], int] = lambda: 0,
        epoch: Callable[[], Optional[int]] = lambda: None,
        world: Callable[[], tuple[int, int]] = lambda: (1, 0),
        threads: int = 2,
    ):
        self.scene = scene
        self.ids = list(ids)
        self.stream = ImageStream(scene, max_num_images_to_cache, threads)
        self.shuffle = shuffle
        self.seed, self.epoch, self.world = seed, epoch, world
        self.passes = 0

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(self.ids)
        epoch = self.epoch()
        if epoch is None:
            epoch = self.passes
        return epoch_order(self.ids, self.seed(), epoch, *self.world())

    def __len__(self) -> int:
        if not self.shuffle:
            return len(self.ids)
        w = max(1, self.world()[0])
        return -(-len(self.ids) // w)

    def __iter__(self) -> Iterator[Batch]:
        order = self.order()
        self.passes += 1
        cams = self.scene.cameras
        for i, d in self.stream.iterate(order):
            yield Batch(
                camera=cams[i],
                image=torch.from_numpy(d.image),
                alpha=None if d.alpha is None else torch.from_numpy(d.alpha),
                mask=None if d.mask is None else torch.from_numpy(d.mask),
                name=self.scene.image_names[i],
                index=i,
            )


class DataModule(lightning.LightningDataModule):
    """COLMAP or Blender scene at `path` (detected from the folder), options in `params`."""

    def __init__(self, path: str, params: DataParams = DataParams()):
        super().__init__()
        self.path = path
        self.params = params
        self._scene: Optional[Scene] = None
        self.datasets: dict[str, ImageDataset] = {}

    # -- the scene, for the module that initialises Gaussians from its points, extent and cameras --
    def prepare_scene(self) -> Scene:
        """Parse the scene (once). Callable before a Trainer exists."""
        if self._scene is None:
            self._scene = load_scene(self.path, self.params)
        return self._scene

    @property
    def scene(self) -> Scene:
        return self.prepare_scene()

    # -- Lightning hooks --
    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def _epoch(self) -> Optional[int]:
        t = self.trainer
        return t.current_epoch if t is not None else None

    def _dataset(self, split: str) -> ImageDataset:
        if split not in self.datasets:
            scene = self.prepare_scene()
            p = self.params
            ids = {"train": scene.train_ids, "val": scene.val_ids, "test": scene.test_ids}[split]
            cap = {"train": p.train_max_num_images_to_cache, "val": p.val_max_num_images_to_cache, "test": p.test_max_num_images_to_cache}[split]
            self.datasets[split] = ImageDataset(
                scene, ids, cap,
                shuffle=split == "train",
                seed=lambda: seed_from_env(self.params.seed),
                epoch=self._epoch,
                world=self._world,
                threads=p.decode_threads,
            )
        return self.datasets[split]

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_scene()

    def _loader(self, split: str) -> DataLoader:
        _quiet_len_warning()
        return DataLoader(self._dataset(split), batch_size=1, collate_fn=_single, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
