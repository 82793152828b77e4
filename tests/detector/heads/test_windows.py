"""Training windows: overlaps with the +1 convention and the fine-tuning labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.windows import finetune_labels, image_windows


def _record() -> ImageRecord:
    return ImageRecord(
        image_id="a",
        path=Path("a.jpg"),
        width=100,
        height=100,
        boxes=np.array([[0, 0, 9, 9], [50, 50, 69, 69]], np.float32),
        labels=np.array([1, 0]),
        difficult=np.array([False, True]),
    )


def test_overlaps_and_labels_hand_computed() -> None:
    proposals = np.array(
        [
            [5, 0, 14, 9],  # IoU 50/150 = 1/3 with GT 0 (class 1): background
            [0, 0, 9, 19],  # IoU 100/200 = 0.5 with GT 0: foreground, inclusive
            [80, 80, 90, 90],  # no overlap: unused by fine-tuning
            [50, 50, 69, 79],  # IoU 400/600 with the difficult GT 1 (class 0): foreground
        ],
        np.float32,
    )
    w = image_windows(_record(), proposals, num_classes=2)
    assert w.is_gt.tolist() == [True, True, False, False, False, False]
    np.testing.assert_allclose(w.max_iou, [1, 1, 1 / 3, 0.5, 0, 2 / 3])
    np.testing.assert_allclose(w.class_iou[:, 1], [1, 0, 1 / 3, 0.5, 0, 0])
    np.testing.assert_allclose(w.class_iou[:, 0], [0, 1, 0, 0, 0, 2 / 3])
    targets = finetune_labels(w, _record().labels, fg_iou=0.5, bg_low=0.1)
    assert targets.tolist() == [2, 1, 0, 2, -1, 1]


def test_image_without_ground_truth() -> None:
    record = ImageRecord("b", Path("b.jpg"), 50, 50)
    w = image_windows(record, np.array([[0, 0, 10, 10]]), num_classes=3)
    assert w.max_iou.tolist() == [0.0] and w.class_iou.shape == (1, 3)
    assert finetune_labels(w, record.labels, 0.5, 0.1).tolist() == [-1]
