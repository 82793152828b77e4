"""Tests of ``sppdet.detector.training.prefetch``: the reader thread and reading maps ahead."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.prefetch import Prefetcher, read_ahead
from tests.detector.training.shared import CLASSES


def test_items_come_in_order_loaded_on_another_thread() -> None:
    caller = threading.get_ident()
    threads = []

    def load(item: int) -> int:
        threads.append(threading.get_ident())
        return item * item

    with Prefetcher(range(7), load, depth=2) as reader:
        got = list(reader)
    assert got == [(i, i * i) for i in range(7)]
    assert set(threads) and caller not in threads


def test_a_failing_load_is_raised_in_the_caller_at_its_item() -> None:
    def load(item: int) -> int:
        if item == 3:
            raise ValueError("item 3 is broken")
        return item

    seen = []
    with pytest.raises(ValueError, match="item 3 is broken"), Prefetcher(range(6), load) as reader:
        for item, _ in reader:
            seen.append(item)
    assert seen == [0, 1, 2]


def test_close_stops_a_reader_that_is_ahead() -> None:
    loaded = []

    def load(item: int) -> int:
        loaded.append(item)
        return item

    reader = Prefetcher(iter(range(10_000)), load, depth=2)
    assert next(reader) == (0, 0)
    reader.close()  # what leaving a `with` block on Ctrl-C does
    assert not reader._thread.is_alive()
    assert len(loaded) < 10  # bounded: the queue holds DEPTH items, no more are read
    with pytest.raises(StopIteration):
        next(reader)


def test_wait_counts_only_the_time_the_caller_was_blocked() -> None:
    def slow(item: int) -> int:
        time.sleep(0.05)
        return item

    with Prefetcher(range(4), slow, depth=1) as reader:
        list(reader)
    assert 0.15 <= reader.wait_seconds < 1.0  # four loads of 50 ms, nothing to overlap with

    with Prefetcher(range(4), lambda i: i, depth=4) as reader:
        time.sleep(0.1)  # the caller computes; the reader is done before it asks
        list(reader)
    assert reader.wait_seconds < 0.05


def test_read_ahead_holds_the_maps_the_caller_pools(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    cache = inputs.cache
    assert isinstance(cache, FeatureCache)
    records = inputs.dataset.records[:4]
    reads = []
    original = cache.read_maps

    def spy(image_id, wanted):  # type: ignore[no-untyped-def]
        reads.append((image_id, threading.get_ident()))
        return original(image_id, wanted)

    cache.read_maps = spy  # type: ignore[method-assign]
    with read_ahead(cache, records, lambda r: (r.image_id, None)) as ready:
        for record in ready:
            key = (record.image_id, 0, False)
            assert key in cache._maps  # held before the caller pools
            boxes = inputs.proposals(record.image_id)
            direct = FeatureCache.open(work, "trainval").pooled(record.image_id, boxes)
            torch.testing.assert_close(cache.pooled(record.image_id, boxes), direct, rtol=0, atol=0)
    assert [r[0] for r in reads] == [r.image_id for r in records]
    assert all(thread != threading.get_ident() for _, thread in reads)
