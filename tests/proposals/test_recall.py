"""Recall figures against hand-computed overlaps (+1 pixel IoU, difficult boxes excluded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.atomic import read_json
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.proposals.recall import AR_THRESHOLDS, best_overlaps, measure_recall, proposal_recall
from sppdet.proposals.store import KIND, ProposalStore

PROPOSALS = {
    # IoU with the GT [0 0 99 99]: 5000 / 10000 = 0.5 exactly (counts: >=), nothing, 1.0
    "a": np.array([[0, 0, 49, 99], [300, 300, 350, 350], [0, 0, 99, 99]], np.int16),
    # GT [10 10 29 29]: 400 / 480 = 0.8333
    "b": np.array([[10, 10, 29, 33]], np.int16),
    "c": np.zeros((0, 4), np.int16),  # recorded as an unreadable image
}


def _dataset() -> Dataset:
    def record(image_id: str, boxes: list[list[int]], difficult: list[bool]) -> ImageRecord:
        return ImageRecord(
            image_id, Path(f"{image_id}.png"), 400, 400,
            np.array(boxes, np.float32), np.zeros(len(boxes), np.int64), np.array(difficult),
        )  # fmt: skip

    records = [
        record("a", [[0, 0, 99, 99], [200, 200, 250, 250]], [False, True]),
        record("b", [[10, 10, 29, 29]], [False]),
        record("c", [[0, 0, 9, 9]], [False]),
    ]
    return Dataset("toy", "test", ("thing",), records)


def _store(work: WorkDir) -> Path:
    root = work.proposals("test")
    store = ShardedStore.create(root, KIND, {"method": "hand"}, ["a", "b", "c"], shard_size=2)

    def fill(writer: ShardWriter, image_ids: list[str]) -> None:
        for image_id in image_ids:
            writer.put(image_id, "boxes", PROPOSALS[image_id])
            writer.set_image_attrs(image_id, width=400, height=400, bad=image_id == "c")

    for shard in store.pending_shards():
        store.write_shard(shard, fill)
    return root


def test_best_overlaps_grow_with_the_number_of_boxes() -> None:
    gt = np.array([[0, 0, 99, 99]])
    np.testing.assert_allclose(best_overlaps(gt, PROPOSALS["a"], (1, 2, 3, 50)), [[0.5, 0.5, 1, 1]])
    assert best_overlaps(gt, PROPOSALS["c"], (1, 2)).tolist() == [[0.0, 0.0]]


def test_recall_report_by_hand(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path / "w")
    _store(work)
    out = tmp_path / "recall.json"
    report = measure_recall(_dataset(), work, out)
    assert report.gt_boxes == 3  # the difficult box of 'a' is excluded
    assert report.recall == {"0.5": pytest.approx(2 / 3), "0.7": pytest.approx(2 / 3)}
    # AR: 'a' is found at all ten thresholds, 'b' (0.833) at 0.50 ... 0.80 = 7, 'c' at none
    assert len(AR_THRESHOLDS) == 10
    assert report.average_recall["100"] == pytest.approx(17 / 30)
    assert report.mean_boxes == 2.0 and report.bad_images == 1
    assert report.seconds_per_image is None  # no timing report for this store
    assert read_json(out)["average_recall"]["2000"] == pytest.approx(17 / 30)
    assert read_json(work.report("recall.json"))["test"]["recall"]["0.5"] == pytest.approx(2 / 3)


def test_recall_refuses_a_store_of_other_images(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path / "w")
    _store(work)
    dataset = _dataset()
    dataset.records.append(ImageRecord("d", Path("d.png"), 10, 10))
    with ProposalStore.open(work.proposals("test")) as store:
        with pytest.raises(SppdetError, match="lacks 1 images of split 'test'"):
            proposal_recall(dataset, store)
