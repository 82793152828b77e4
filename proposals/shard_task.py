"""One shard of the `propose` stage, as a worker computes it: decode, propose, write atomically.

Each task reads its images with ``read_image`` (the one decoder, EXIF applied), proposes with
the table's method (proposals/methods.py) and writes its shard through ``ShardedStore``, which
makes the file appear whole or not at all. An image's boxes depend only on its pixels and the
settings, so a shard's bytes do not depend on which worker made it or when.

An unreadable image is stored with zero boxes, ``bad=True`` and the reason, and reported in the
task's outcome; the per-image times go back in the outcome too, never into the shard file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.detector.core.config import ProposalConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import read_image
from sppdet.proposals.methods import propose
from sppdet.proposals.ranking import storage_dtype
from sppdet.proposals.store import BOXES, KIND, MADE_BY

COMPRESSION = "gzip"


@dataclass(frozen=True)
class BadImage:
    """An image its shard task could not decode (stored with zero boxes)."""

    image_id: str
    reason: str  # names the file


@dataclass
class ShardOutcome:
    """What one shard task did (picklable, small)."""

    images: int = 0  # readable images proposed
    seconds: float = 0.0  # their decode + proposal time (wall clock)
    cpu_seconds: float = 0.0  # the same in CPU time: independent of other jobs on the machine
    bad: list[BadImage] = field(default_factory=list)


def write_boxes(
    writer: ShardWriter, image_id: str, boxes: np.ndarray, width: int, height: int
) -> None:
    """Store one readable image's boxes in the smallest integer type that holds its pixels."""
    writer.put(image_id, BOXES, boxes.astype(storage_dtype(width, height)), COMPRESSION)
    writer.set_image_attrs(image_id, width=width, height=height, bad=False)


def _write_bad(writer: ShardWriter, image_id: str, reason: str) -> None:
    writer.put(image_id, BOXES, np.zeros((0, 4), np.int16))
    writer.set_image_attrs(image_id, width=0, height=0, bad=True, error=reason)


def propose_shard(root: str, shard: int, settings: dict[str, Any]) -> ShardOutcome:
    """Compute and write shard SHARD of the proposals store at ROOT (a ``map_shards`` task).

    SETTINGS: ``config`` (ProposalConfig), ``paths`` (image id -> file), ``edge_model`` (or None).
    """
    cfg: ProposalConfig = settings["config"]
    paths: dict[str, str] = settings["paths"]
    store = ShardedStore.open(root, KIND, made_by=MADE_BY, require_complete=False)
    outcome = ShardOutcome()

    def fill(writer: ShardWriter, image_ids: list[str]) -> None:
        for image_id in image_ids:
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                rgb = read_image(paths[image_id])
            except SppdetError as exc:
                _write_bad(writer, image_id, str(exc))
                outcome.bad.append(BadImage(image_id, str(exc)))
                continue
            boxes = propose(rgb, cfg, settings["edge_model"])
            write_boxes(writer, image_id, boxes, rgb.shape[1], rgb.shape[0])
            outcome.images += 1
            outcome.seconds += time.perf_counter() - start
            outcome.cpu_seconds += time.process_time() - cpu_start

    with _opencv_errors_only():
        store.write_shard(shard, fill)
    return outcome


@contextmanager
def _opencv_errors_only() -> Iterator[None]:
    # A corrupt image makes OpenCV print its own warning; our one line per bad file is enough.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(min(level, cv2.utils.logging.LOG_LEVEL_ERROR))
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
