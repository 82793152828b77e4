"""Reading ahead: one thread loads what the next steps need while the caller computes.

The stages read conv5 maps from HDF5 shards; decoding them on the thread that trains or scores
would leave the device idle. ``Prefetcher(items, load)`` runs ``load(item)`` for the items in
order on one reader thread and hands out ``(item, loaded)`` pairs through a bounded queue
(``depth`` entries ahead, so memory stays bounded). An exception in the reader is raised in the
caller at the item it failed on; ``close`` (also on leaving a ``with`` block, e.g. on Ctrl-C)
stops the reader within one poll interval. ``wait_seconds`` is the time the caller spent
blocked waiting for data: the share of a stage's time the device waited.

``read_ahead`` applies it to the conv5 cache: the maps of the next images are decoded from
HDF5 on the reader thread, then moved to the device once, on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from sppdet.detector.features.reader import FeatureCache, MapKey
from sppdet.detector.training.inputs import WindowFeatures

T = TypeVar("T")
R = TypeVar("R")

READER_POLL_SECONDS = 0.1  # how often a blocked reader checks whether it was closed
READER_JOIN_SECONDS = 5.0  # how long ``close`` waits for a reader busy in one read
READ_AHEAD_IMAGES = 2  # images whose maps are read before the caller needs them


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_DONE = object()  # the reader ran out of items


class Prefetcher(Generic[T, R]):
    """``(item, load(item))`` for ITEMS in order, loaded DEPTH items ahead on one thread."""

    def __init__(
        self, items: Iterable[T], load: Callable[[T], R], depth: int = 2, name: str = "reader"
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self.wait_seconds = 0.0
        self._thread = threading.Thread(
            target=self._read, args=(iter(items), load), name=f"sppdet-{name}", daemon=True
        )
        self._thread.start()

    def _read(self, items: Iterator[T], load: Callable[[T], R]) -> None:
        try:
            for item in items:
                if self._stop.is_set() or not self._put((item, load(item))):
                    return
        except BaseException as exc:  # handed to the caller, raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def _put(self, entry: object) -> bool:
        """Queue ENTRY unless the prefetcher is closed first; False when it was."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=READER_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[T, R]]:
        return self

    def __next__(self) -> tuple[T, R]:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        entry = self._queue.get()
        self.wait_seconds += time.perf_counter() - start
        if entry is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(entry, _Failure):
            self._finished = True
            raise entry.error
        return entry  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the reader and wait for it (a read in progress finishes first)."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(READER_JOIN_SECONDS)

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def read_ahead(
    cache: WindowFeatures,
    items: Iterable[T],
    wanted: Callable[[T], tuple[str, np.ndarray | None]],
    depth: int = READ_AHEAD_IMAGES,
) -> Iterator[ReadAhead[T]]:
    """ITEMS in order, each one's conv5 maps held on the cache's device when it comes out.

    WANTED(item) gives its image id and the windows it will pool (their best scales are read),
    or None for every scale. The maps are read on a reader thread DEPTH items ahead; a cache of
    stored features (R-CNN's) has no maps to read and passes the items through.
    """
    if not isinstance(cache, FeatureCache):
        yield ReadAhead(iter(items), None)
        return

    def load(item: T) -> dict[MapKey, torch.Tensor]:
        image_id, boxes = wanted(item)
        if boxes is None:
            scales = range(cache.num_scales)
        else:
            scales = np.unique(cache.best_scale(image_id, boxes)).tolist() if len(boxes) else []
        return cache.read_maps(image_id, [(int(k), False) for k in scales])

    with Prefetcher(items, load, depth, name="conv5-reader") as reader:

        def held() -> Iterator[T]:
            for item, maps in reader:
                cache.hold_maps(maps)
                yield item

        yield ReadAhead(held(), reader)


@dataclass
class ReadAhead(Generic[T]):
    """The items of ``read_ahead``, and how long the caller waited for their maps."""

    items: Iterator[T]
    reader: Prefetcher[T, Any] | None

    def __iter__(self) -> Iterator[T]:
        return self.items

    @property
    def wait_seconds(self) -> float:
        return 0.0 if self.reader is None else self.reader.wait_seconds
