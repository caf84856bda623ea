"""The capped image cache: what stays resident, what is decoded when, and the prefetch thread."""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pytest

import internal.data.cache as cache_mod
from data_helpers import make_colmap_scene
from internal.data import ColmapParams, DataParams, load_scene
from internal.data.cache import ImageStream
from internal.data.images import load_image


@pytest.fixture
def scene(tmp_path):
    make_colmap_scene(tmp_path, n_images=10, sizes=((40, 30),))
    return load_scene(tmp_path, DataParams(colmap=ColmapParams(split_mode="reconstruction")))


class Tracker:
    """Counts decodes and the decoded images alive at any moment (through weak references)."""

    def __init__(self, monkeypatch):
        self.decodes = 0
        self.alive = 0
        self.peak = 0
        self.lock = threading.Lock()
        monkeypatch.setattr(cache_mod, "load_image", self.load)

    def _gone(self):
        with self.lock:
            self.alive -= 1

    def load(self, scene, i):
        d = load_image(scene, i)
        with self.lock:
            self.decodes += 1
            self.alive += 1
            self.peak = max(self.peak, self.alive)
        weakref.finalize(d, self._gone)
        return d


def drain(stream, order):
    out = []
    for i, d in stream.iterate(order):
        assert d.image.dtype == np.uint8
        out.append(i)
        del d
    return out


def test_keep_all(scene, monkeypatch):
    t = Tracker(monkeypatch)
    s = ImageStream(scene, cap=-1)
    assert drain(s, range(10)) == list(range(10)) and t.decodes == 10
    assert drain(s, [3, 1, 2, 9, 0, 4, 5, 6, 7, 8]) == [3, 1, 2, 9, 0, 4, 5, 6, 7, 8]
    assert t.decodes == 10 and len(s.kept) == 10  # second pass: nothing decoded again


def test_cap_at_least_the_images_keeps_all(scene, monkeypatch):
    t = Tracker(monkeypatch)
    s = ImageStream(scene, cap=10)
    drain(s, range(10))
    drain(s, range(10))
    assert t.decodes == 10


def test_cap_zero_decodes_on_every_access(scene, monkeypatch):
    t = Tracker(monkeypatch)
    s = ImageStream(scene, cap=0)
    drain(s, range(10))
    drain(s, [0, 0, 1])
    assert t.decodes == 13 and not s.kept and t.peak == 1


@pytest.mark.parametrize("cap", [1, 3, 4])
def test_cap_n_bounds_residency(scene, monkeypatch, cap):
    t = Tracker(monkeypatch)
    s = ImageStream(scene, cap=cap)
    order = list(np.random.default_rng(0).permutation(10))
    for _ in range(2):
        seen = []
        for i, d in s.iterate(order):
            seen.append(i)
            del d
            time.sleep(0.002)  # let the prefetcher run ahead as far as it may
            assert t.alive <= 2 * cap, (t.alive, cap)
        assert seen == order
    assert t.peak <= 2 * cap and t.decodes == 20 and not s.kept


def test_prefetch_thread_ends_when_iteration_is_abandoned(scene):
    s = ImageStream(scene, cap=2)
    it = s.iterate(range(10))
    next(it)
    next(it)
    it.close()
    deadline = time.time() + 5
    while any(th.name == "gs-prefetch" for th in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(th.name == "gs-prefetch" for th in threading.enumerate())


def test_negative_cap_below_minus_one_is_refused(scene):
    with pytest.raises(ValueError, match="max_num_images_to_cache"):
        ImageStream(scene, cap=-2)
