"""The DataModule under Lightning: CLI flags, batches, per-epoch order, DDP shares, val/test order."""

from __future__ import annotations

from types import SimpleNamespace

import lightning
import pytest
import torch

from data_helpers import LEGO_800, STATUE, make_colmap_scene, shared
from internal.data import ColmapParams, DataParams
from internal.data.datamodule import Batch, DataModule, epoch_order


@pytest.fixture
def mixed_scene(tmp_path):
    """9 images of two sizes (like the statue's varying heights)."""
    make_colmap_scene(tmp_path, n_images=9, models=("PINHOLE", "PINHOLE"), sizes=((40, 30), (40, 31)))
    return tmp_path


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:LightningCLI's args parameter", "ignore:No seed found")
def test_cli_flags_parse_into_the_dataclasses(tmp_path):
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.demos.boring_classes import BoringModel

    args = ["--data.path", str(tmp_path), "--data.params.colmap.mask_dir", "MASKS", "--data.params.train_max_num_images_to_cache", "1024",
            "--data.params.colmap.appearance_groups", "NAME", "--data.params.blender.white_background", "false",
            "--data.params.colmap.split_mode", "reconstruction", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    cli = LightningCLI(BoringModel, DataModule, run=False, args=args, save_config_callback=None)
    p = cli.datamodule.params
    assert isinstance(p, DataParams) and isinstance(p.colmap, ColmapParams)
    assert (p.colmap.mask_dir, p.colmap.appearance_groups, p.train_max_num_images_to_cache) == ("MASKS", "NAME", 1024)
    assert p.blender.white_background is False and p.colmap.split_mode == "reconstruction"
    assert p.val_max_num_images_to_cache == -1 and p.colmap.image_dir == "images"
    with pytest.raises(SystemExit):  # a typo in a choice is refused by the parser
        LightningCLI(BoringModel, DataModule, run=False, args=["--data.path", "x", "--data.params.colmap.split_mode", "exp"], save_config_callback=None)


def test_prepare_scene_before_a_trainer(mixed_scene):
    dm = DataModule(str(mixed_scene))
    s = dm.prepare_scene()
    assert s is dm.scene and len(s.points_xyz) == 40 and s.extent > 0


def test_train_batches_and_per_epoch_order(mixed_scene):
    dm = DataModule(str(mixed_scene), DataParams(train_max_num_images_to_cache=2, seed=7))
    dm.setup("fit")
    dl = dm.train_dataloader()
    assert len(dl) == len(dm.scene.train_ids) == 7
    first = list(dl)
    b = first[0]
    assert isinstance(b, Batch) and len(b.camera) == 1 and b.image.dtype == torch.uint8 and b.image.ndim == 3
    assert b.image.shape[:2] == (int(b.camera.height[0]), int(b.camera.width[0]))
    assert {x.image.shape[0] for x in first} == {30, 31}  # variable sizes pass through the collate
    assert b.name == dm.scene.image_names[b.index] and b.mask is None and b.alpha is None
    order0 = [x.index for x in first]
    order1 = [x.index for x in dl]
    assert sorted(order0) == sorted(order1) == dm.scene.train_ids and order0 != order1
    assert order0 == epoch_order(dm.scene.train_ids, 7, 0) and order1 == epoch_order(dm.scene.train_ids, 7, 1)
    # reproducible from the seed
    dm2 = DataModule(str(mixed_scene), DataParams(seed=7))
    assert [x.index for x in dm2.train_dataloader()] == order0


def test_val_and_test_in_order(mixed_scene):
    dm = DataModule(str(mixed_scene), DataParams(val_max_num_images_to_cache=1, test_max_num_images_to_cache=0))
    assert [b.index for b in dm.val_dataloader()] == dm.scene.val_ids == [0, 8]
    assert [b.index for b in dm.test_dataloader()] == dm.scene.test_ids


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shares_are_disjoint_equal_and_cover(mixed_scene, world):
    shares = []
    for rank in range(world):
        dm = DataModule(str(mixed_scene), DataParams(seed=1))
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=5)
        dl = dm.train_dataloader()
        shares.append([b.index for b in dl])
        assert len(dl) == len(shares[-1])
    n = len(shares[0])
    assert all(len(s) == n for s in shares)  # equal lengths keep collectives in step
    flat = [i for s in shares for i in s]
    perm = epoch_order(list(range(9))[1:8], 1, 5)  # the train ids 1..7, un-sharded
    assert sorted(set(flat)) == sorted(perm)
    assert len(flat) - len(set(flat)) == (-7) % world  # only the padding repeats
    # rank r takes elements r, r+W, ... of the same permutation
    padded = perm + perm[: (-7) % world]
    for r in range(world):
        assert shares[r] == padded[r::world]


def test_batch_to_device_through_lightning(mixed_scene):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    dm = DataModule(str(mixed_scene))
    b = next(iter(dm.val_dataloader()))
    moved = move_data_to_device(b, torch.device("meta"))
    assert isinstance(moved, Batch) and moved.image.device.type == "meta" and moved.camera.R.device.type == "meta"


class _Recorder(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_seen: list[tuple[int, int]] = []
        self.val_seen: list[int] = []

    def training_step(self, batch, i):
        assert isinstance(batch, Batch)
        self.train_seen.append((self.current_epoch, batch.index))
        return self.w * batch.image.float().mean() / 255

    def validation_step(self, batch, i):
        self.val_seen.append(batch.index)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_with_a_trainer(mixed_scene):
    dm = DataModule(str(mixed_scene), DataParams(train_max_num_images_to_cache=3, seed=11))
    m = _Recorder()
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, dm)
    train_ids = dm.scene.train_ids
    for epoch in (0, 1):
        assert [i for e, i in m.train_seen if e == epoch] == epoch_order(train_ids, 11, epoch)
    assert m.val_seen == dm.scene.val_ids * 2


def test_lego_800_datamodule_has_empty_val(tmp_path):
    dm = DataModule(str(shared(LEGO_800)), DataParams(train_max_num_images_to_cache=4))
    assert len(dm.val_dataloader()) == 0 and len(dm.train_dataloader()) == 25
    b = next(iter(dm.train_dataloader()))
    assert b.image.shape == (800, 800, 3) and b.alpha.shape == (800, 800) and b.alpha.dtype == torch.uint8


def test_statue_datamodule_sizes(tmp_path):
    dm = DataModule(str(shared(STATUE)), DataParams(val_max_num_images_to_cache=0))
    heights = [b.image.shape[0] for b in dm.val_dataloader()]
    assert heights == [int(dm.scene.cameras.height[i]) for i in dm.scene.val_ids]


DDP_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import lightning, torch
from internal.data import DataParams
from internal.data.datamodule import DataModule

class Rec(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []
    def training_step(self, batch, i):
        self.seen.append([self.current_epoch, batch.index])
        return self.w * 0 + self.w.sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def on_train_end(self):
        with open(f"{sys.argv[3]}/rank{self.global_rank}.json", "w") as f:
            json.dump({"seen": self.seen, "world": self.trainer.world_size}, f)

dm = DataModule(sys.argv[2], DataParams(train_max_num_images_to_cache=2, seed=5))
trainer = lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0)
trainer.fit(Rec(), dm)
from internal import ddp
ddp.shutdown()  # as main.py: release the process group before exit, or gloo may abort the shutdown
"""


def test_real_ddp_two_processes_get_disjoint_shares(mixed_scene, tmp_path):
    """Two gloo processes: Lightning keeps our IterableDataset (no DistributedSampler swapped in) and
    each rank gets its share r, r+W, ... of the same per-epoch permutation."""
    import json
    import os
    import subprocess
    import sys

    from data_helpers import REPO

    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, str(script), str(REPO), str(mixed_scene), str(out)], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["world"] == 2 for x in ranks)
    train_ids = list(range(1, 8))  # 9 images, held out 0 and 8
    for epoch in (0, 1):
        perm = epoch_order(train_ids, 5, epoch)
        padded = perm + perm[:1]  # 7 images over 2 ranks: one repeated
        for k in (0, 1):
            assert [i for e, i in ranks[k]["seen"] if e == epoch] == padded[k::2]
