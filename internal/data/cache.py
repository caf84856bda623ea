"""Bounded-RAM streaming of decoded images.

`ImageStream(scene, cap).iterate(order)` yields `(index, Decoded)` in the given order:

  cap = -1  every decoded image is kept (decoded the first time it is needed, prefetched a few ahead);
  cap = 0   nothing is kept: each access decodes, in the caller's thread;
  cap = N   when `order` has at most N distinct images they are all kept, as for -1; otherwise the
            order is cut into chunks of N: the chunk being consumed is resident while a background
            thread decodes the next one, and nothing else. Peak: 2 N decoded images (+ the one the
            caller still holds).

Decoding uses `threads` threads; Pillow and torch release the GIL while they decode and resample.
An error while decoding (a DatasetError naming the file) is raised in the consumer's thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

from .images import Decoded, load_image
from .scene import Scene

_KEEP_ALL_PREFETCH = 8  # chunk size of the background decoding while everything is being kept


def _find_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None


_malloc_trim = _find_malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS. glibc keeps freed multi-megabyte blocks in its per-thread
    arenas, so without this the resident size would stay several images' worth above what is
    alive (BENCHMARKS.md). Called once per chunk: it costs about a millisecond."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class ImageStream:
    def __init__(self, scene: Scene, cap: int = -1, threads: int = 2):
        if cap < -1:
            raise ValueError(f"max_num_images_to_cache must be -1, 0 or a positive count, got {cap}")
        self.scene = scene
        self.cap = int(cap)
        self.threads = max(1, int(threads))
        self.kept: dict[int, Decoded] = {}  # images resident between iterations

    def keeps_all(self, order: Sequence[int]) -> bool:
        return self.cap < 0 or (self.cap > 0 and len(set(order)) <= self.cap)

    def iterate(self, order: Sequence[int]) -> Iterator[tuple[int, Decoded]]:
        order = list(order)
        if self.cap == 0:
            for i in order:
                yield i, load_image(self.scene, i)
            return
        if self.keeps_all(order):
            todo = list(dict.fromkeys(i for i in order if i not in self.kept))
            if not todo:
                for i in order:
                    yield i, self.kept[i]
                return
            # First pass: decode in the background, a few ahead, keeping everything.
            decoded = self._chunks(todo, _KEEP_ALL_PREFETCH)
            try:
                for i in order:
                    while i not in self.kept:
                        for j, d in next(decoded):
                            self.kept[j] = d
                    yield i, self.kept[i]
            finally:
                decoded.close()
            return
        self.kept.clear()  # a capped stream keeps nothing between iterations
        chunks = self._chunks(order, self.cap)
        try:
            for chunk in chunks:
                chunk.reverse()
                while chunk:  # each image is let go as soon as it has been handed out
                    yield chunk.pop()
                del chunk
        finally:
            chunks.close()

    def _chunks(self, order: list[int], size: int) -> Iterator[list[tuple[int, Decoded]]]:
        """Chunks of `size` decoded images; the next chunk is decoded while the current one is used.

        Two slots: the consumer holds one chunk, the background thread fills the other. The thread
        takes a slot before decoding a chunk and the consumer gives its slot back when it asks for
        the next chunk, so at most two chunks are alive at any time.
        """
        chunks = [order[k : k + size] for k in range(0, len(order), size)]
        if not chunks:
            return
        slots = threading.Semaphore(2)
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        scene = self.scene

        def produce():
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="gs-decode") as pool:
                for ids in chunks:
                    while not slots.acquire(timeout=0.05):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    def load(i):  # skips the rest of the chunk once the consumer has gone
                        return None if stop.is_set() else load_image(scene, i)

                    try:
                        out = list(zip(ids, pool.map(load, ids)))
                    except BaseException as e:  # delivered to the consumer, which raises it
                        ready.put(e)
                        return
                    ready.put(out)

        thread = threading.Thread(target=produce, name="gs-prefetch", daemon=True)
        thread.start()
        try:
            for _ in chunks:
                while True:
                    try:
                        got = ready.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if not thread.is_alive() and ready.empty():
                            raise RuntimeError("image prefetch thread ended without delivering a chunk") from None
                if isinstance(got, BaseException):
                    raise got
                yield got
                del got
                slots.release()
                release_freed_memory()
        finally:
            stop.set()
            thread.join(timeout=30)
