"""User masks: naming, values, down-sampling, Blender."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_helpers import copy_statue, make_blender_scene, make_colmap_scene
from internal.data import BlenderParams, ColmapParams, DataParams, load_scene
from internal.data.images import load_image


def _masks(root, names, size):
    """Masks named `<image name>.png`, ignoring the top-left block and the last pixel."""
    (root / "masks").mkdir(exist_ok=True)
    out = {}
    for n in names:
        m = np.full(size[::-1], 255, np.uint8)
        m[: size[1] // 2, : size[0] // 3] = 0
        m[-1, -1] = 0
        Image.fromarray(m).save(root / "masks" / f"{n}.png")
        out[n] = m != 0
    return out


@pytest.mark.parametrize("naming", ["a.png.png", "a.png"])
def test_colmap_masks_both_namings(tmp_path, naming):
    make_colmap_scene(tmp_path, n_images=3)
    names = [f"img_{k:03d}.png" for k in range(3)]
    expect = _masks(tmp_path, names, (64, 48))
    if naming == "a.png":  # the image's extension replaced by .png (here: the same name)
        for n in names:
            (tmp_path / "masks" / f"{n}.png").rename(tmp_path / "masks" / n)
    s = load_scene(tmp_path, DataParams(colmap=ColmapParams(mask_dir="masks")))
    for k, n in enumerate(s.image_names):
        d = load_image(s, k)
        assert d.mask.dtype == bool and d.mask.shape == (48, 64)
        np.testing.assert_array_equal(d.mask, expect[n])


def test_jpg_mask_naming_on_the_statue(tmp_path):
    root = copy_statue(tmp_path / "statue")
    s0 = load_scene(root)
    (root / "m").mkdir()
    for k, (n, p) in enumerate(zip(s0.image_names, s0.image_paths)):
        w, h = Image.open(p).size
        m = np.full((h, w), 255, np.uint8)
        m[:100] = 0
        Image.fromarray(m).save(root / "m" / (f"{n}.png" if k % 2 else n.replace(".jpg", ".png")))  # a.jpg.png or a.png
    s = load_scene(root, DataParams(colmap=ColmapParams(mask_dir="m", down_sample_factor=2)))
    d = load_image(s, 1)
    assert d.mask.shape == d.image.shape[:2]
    assert not d.mask[:50].any() and d.mask[50:].all()  # 100 rows at full size = 50 rows at half size


def test_mask_blocks_reduce_conservatively(tmp_path):
    make_colmap_scene(tmp_path, n_images=1)
    (tmp_path / "masks").mkdir()
    m = np.full((48, 64), 255, np.uint8)
    m[5, 7] = 0  # one ignored pixel: its whole 2x2 block is ignored at factor 2
    Image.fromarray(m).save(tmp_path / "masks" / "img_000.png")
    s = load_scene(tmp_path, DataParams(colmap=ColmapParams(mask_dir="masks", down_sample_factor=2)))
    d = load_image(s, 0)
    assert d.mask.shape == (24, 32) and (~d.mask).sum() == 1 and not d.mask[2, 3]


def test_mask_at_the_down_sampled_size_is_accepted(tmp_path):
    make_colmap_scene(tmp_path, n_images=1)
    (tmp_path / "masks").mkdir()
    Image.new("L", (32, 24), 255).save(tmp_path / "masks" / "img_000.png")
    s = load_scene(tmp_path, DataParams(colmap=ColmapParams(mask_dir="masks", down_sample_factor=2)))
    assert load_image(s, 0).mask.all()


def test_blender_masks(tmp_path):
    root = make_blender_scene(tmp_path, n=(2, 1, 0))
    for split, i in (("train", 0), ("train", 1), ("val", 0)):
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        m = np.full((30, 40), 255, np.uint8)
        m[:, :10] = 0
        Image.fromarray(m).save(root / "masks" / split / f"r_{i}.png")
    s = load_scene(root, DataParams(blender=BlenderParams(mask_dir="masks")))
    d = load_image(s, 2)
    assert d.alpha is not None and not d.mask[:, :10].any() and d.mask[:, 10:].all()
