"""Box geometry: +1 IoU, devkit-exact NMS through torchvision, R-CNN deltas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from sppdet.detector.core.boxes import (
    areas,
    clip_boxes,
    decode_deltas,
    encode_deltas,
    iou_matrix,
    nms,
)


def test_areas_use_plus_one_convention() -> None:
    assert areas(np.array([[0, 0, 9, 9], [5, 5, 5, 5]], np.float32)).tolist() == [100, 1]


def test_iou_hand_computed() -> None:
    a = np.array([[0, 0, 9, 9]], np.float32)  # 100 px
    b = np.array([[5, 0, 14, 9], [10, 10, 20, 20], [0, 0, 9, 9]], np.float32)
    # overlap 5x10 = 50, union 150 -> 1/3; disjoint; identical.
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 3, 0.0, 1.0]])


def test_iou_touching_boxes_share_one_pixel_column() -> None:
    # x2 of A equals x1 of B: under the +1 convention they overlap in one column.
    iou = iou_matrix(np.array([[0, 0, 9, 9]]), np.array([[9, 0, 18, 9]]))
    assert iou[0, 0] == pytest.approx(10 / 190)


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if iou_matrix(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thr]
    return keep


def test_nms_matches_plus_one_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 60, size=(300, 2))
    wh = rng.integers(1, 40, size=(300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.random(300)
    assert nms(boxes, scores, 0.3).tolist() == _reference_nms(boxes, scores, 0.3)


def test_nms_threshold_is_strict_greater() -> None:
    # IoU exactly 1/3 with threshold 1/3 is kept; the +1 convention makes this exact.
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    assert sorted(nms(boxes, np.array([1.0, 0.5]), 1 / 3 + 1e-9).tolist()) == [0, 1]
    assert nms(boxes, np.array([1.0, 0.5]), 0.3).tolist() == [0]


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.integers(0, 60, size=(n, 2))
    return np.concatenate([xy, xy + rng.integers(0, 40, size=(n, 2))], axis=1).astype(np.float32)


def test_nms_is_torchvision_on_boxes_one_pixel_wider() -> None:
    """The +1 convention: an inclusive box x1..x2 covers the continuous interval [x1, x2 + 1)."""
    # Continuous IoU of these two is 36 / 126 = 0.286, the devkit's 50 / 150 = 1/3.
    pair = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    assert nms(pair, np.array([1.0, 0.5]), 0.3).tolist() == [0]
    unshifted = torchvision.ops.nms(torch.tensor(pair), torch.tensor([1.0, 0.5]), 0.3)
    assert unshifted.tolist() == [0, 1]  # without the shift both would be kept
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 200)
    scores = rng.random(200)
    wider = np.array([[x1, y1, x2 + 1, y2 + 1] for x1, y1, x2, y2 in boxes.tolist()])
    for thr in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.tensor(wider), torch.tensor(scores), thr)
        np.testing.assert_array_equal(nms(boxes, scores, thr), expected.numpy())


def test_nms_with_classes_suppresses_within_a_class_only() -> None:
    rng = np.random.default_rng(8)
    boxes = _random_boxes(rng, 300)
    scores = rng.random(300).astype(np.float32)
    classes = rng.integers(0, 3, size=300)
    kept = nms(boxes, scores, 0.3, classes=classes)
    # Highest score first over all classes; per class, exactly the single-class NMS.
    assert (np.diff(scores[kept]) <= 0).all()
    for k in range(3):
        rows = np.nonzero(classes == k)[0]
        alone = rows[_reference_nms(boxes[rows], scores[rows], 0.3)]
        assert kept[classes[kept] == k].tolist() == alone.tolist()
    # Two identical boxes of different classes both survive.
    same = np.array([[0, 0, 9, 9], [0, 0, 9, 9]], np.float32)
    assert nms(same, np.array([1.0, 0.5]), 0.3, classes=np.array([0, 1])).tolist() == [0, 1]
    assert nms(same, np.array([1.0, 0.5]), 0.3).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3, classes=np.zeros(0, np.int64)).shape == (0,)


def test_nms_runs_on_the_device_asked_and_leaves_the_inputs_alone() -> None:
    rng = np.random.default_rng(9)
    boxes = _random_boxes(rng, 200)
    scores = rng.random(200)
    classes = rng.integers(0, 3, size=200)
    before = boxes.copy()
    on_cpu = nms(boxes, scores, 0.3, classes=classes, device=torch.device("cpu"))
    np.testing.assert_array_equal(boxes, before)  # the +1 shift works on a copy
    np.testing.assert_array_equal(on_cpu, nms(boxes, scores, 0.3, classes=classes))
    # The meta device has shapes but no data: NMS really ran there when it cannot finish.
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        nms(boxes, scores, 0.3, device="meta")
    if torch.cuda.is_available():
        for cls in (None, classes):
            on_gpu = nms(boxes, scores, 0.5, classes=cls, device="cuda")
            np.testing.assert_array_equal(on_gpu, nms(boxes, scores, 0.5, classes=cls))


def test_deltas_round_trip_and_known_values() -> None:
    proposals = np.array([[10, 10, 30, 50], [0, 0, 100, 20]], np.float64)
    targets = np.array([[12, 8, 34, 58], [10, -5, 60, 25]], np.float64)
    deltas = encode_deltas(proposals, targets)
    # proposal 0: pw=20, px=20; target gw=22, gx=23 -> dx=0.15, dw=log(1.1)
    assert deltas[0, 0] == pytest.approx(0.15)
    assert deltas[0, 2] == pytest.approx(np.log(22 / 20))
    np.testing.assert_allclose(decode_deltas(proposals, deltas), targets, atol=1e-9)


def test_clip_boxes() -> None:
    out = clip_boxes(np.array([[-5, -1, 120, 40]]), width=100, height=30)
    assert out.tolist() == [[0, 0, 99, 29]]
