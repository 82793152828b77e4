"""Tests of ``sppdet.detector.heads.finetune``.

Fine-tuning: batch composition, the learning-rate schedule, learning, and exact resume.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import FinetuneConfig
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import (
    TrainState,
    WindowTable,
    learning_rate,
    pool_batch,
    round_batches,
    split_holdout,
    train,
)

NUM_CLASSES = 2


def _records(n: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x, y = rng.integers(10, 60, size=2)
        box = np.array([[x, y, x + 40, y + 40]], np.float32)
        out.append(
            ImageRecord(
                f"im{i}",
                Path(f"im{i}.jpg"),
                120,
                120,
                box,
                np.array([i % NUM_CLASSES]),
                np.array([False]),
            )
        )
    return out


def _proposals(records: list[ImageRecord]):  # type: ignore[no-untyped-def]
    by_id = {r.image_id: r for r in records}

    def get(image_id: str) -> np.ndarray:
        rng = np.random.default_rng(int(image_id[2:]))
        gt = by_id[image_id].boxes[0]
        return (gt + rng.normal(0, 12, size=(60, 4))).astype(np.float32)

    return get


class GeometryPooler:
    """A stand-in for the conv5 cache whose features make the class visible near the object."""

    num_scales = 3
    has_flip = True

    def __init__(self, records: list[ImageRecord]) -> None:
        self.by_id = {r.image_id: r for r in records}
        self.calls: list[tuple[str, bool]] = []

    def pooled(self, image_id, boxes, scales, flipped, dtype=torch.float32):  # type: ignore[no-untyped-def]
        self.calls.append((image_id, flipped))
        record = self.by_id[image_id]
        iou = iou_matrix(boxes, record.boxes)[:, 0]
        one_hot = np.eye(NUM_CLASSES)[record.labels[0]]
        scale = np.zeros(len(boxes)) if scales is None else np.asarray(scales, float)
        feats = np.concatenate(
            [
                4 * iou[:, None] * one_hot[None],
                4 * iou[:, None],
                scale[:, None] / 3,
                np.full((len(boxes), 1), float(flipped)),
            ],
            axis=1,
        )
        return torch.as_tensor(feats, dtype=dtype)


def _cfg(**changes: object) -> FinetuneConfig:
    base = FinetuneConfig(
        base_lr=0.05,
        lr_steps=(80,),
        iterations=150,
        checkpoint_every=10,
        log_every=20,
        batch_size=32,
        dropout=0.0,
        images_per_round=4,
    )
    return dataclasses.replace(base, **changes)


def test_batches_have_a_quarter_foreground_and_random_scales_and_flips() -> None:
    records = _records(12)
    cfg = _cfg()
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    assert set(np.unique(table.target)) <= {0, 1, 2} and (table.target > 0).any()
    plan = round_batches(table, np.arange(12), cfg, num_scales=3, has_flip=True, round_index=0)
    batch = plan[0]
    fg_in_round = (table.target[table.subset(np.unique(table.image[batch.rows]))] > 0).sum()
    assert len(plan) == -(-fg_in_round // 8)  # each foreground window seen once on average
    assert len(batch.rows) == 32 and (table.target[batch.rows] > 0).sum() == 8
    assert set(batch.scales.tolist()) <= {0, 1, 2} and batch.flipped.any()
    assert len(np.unique(table.image[batch.rows])) <= 4  # drawn from the round's images only


def test_pool_batch_keeps_row_order() -> None:
    records = _records(5)
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, _cfg())
    pooler = GeometryPooler(records)
    rows = np.array([40, 3, 100, 41, 7])
    flips = np.array([True, False, False, True, False])
    out = pool_batch(pooler, table, rows, np.array([0, 1, 2, 0, 1]), flips)
    for i, row in enumerate(rows):
        alone = pooler.pooled(
            table.image_ids[table.image[row]],
            table.boxes[[row]],
            np.array([[0, 1, 2, 0, 1][i]]),
            bool(flips[i]),
        )
        torch.testing.assert_close(out[i : i + 1], alone)


def test_learning_rate_schedule_and_holdout() -> None:
    cfg = FinetuneConfig()  # released: 1e-3, x0.1 at 30k and 60k
    rates = [learning_rate(cfg, i) for i in (0, 29_999, 30_000, 60_000)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-12)
    train_images, held = split_holdout(25)
    assert held.tolist() == [9, 19] and len(train_images) == 23


def _head() -> FcHead:
    torch.manual_seed(0)
    head = FcHead(in_dim=NUM_CLASSES + 3, hidden=16, num_outputs=NUM_CLASSES + 1, dropout=0.0)
    head.init_fc8(0.01)
    return head


def test_training_learns_and_resume_is_exact() -> None:
    records = _records(20)
    cfg = _cfg()
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    pooler = GeometryPooler(records)

    head = _head()
    saved: list[tuple[TrainState, dict, dict]] = []

    def save(state: TrainState, optim: dict) -> None:
        saved.append((copy.deepcopy(state), copy.deepcopy(optim), copy.deepcopy(head.state_dict())))

    final = train(head, pooler, table, cfg, TrainState(0, 0, []), None, save)
    assert final.iteration == 150
    assert final.history[-1]["fg_accuracy"] > 0.9  # chance is 1/2 among foreground classes
    assert final.history[-1]["loss"] < 0.5 * final.history[0]["loss"]

    # Resume from the first checkpoint: the same weights as the uninterrupted run.
    state, optim, weights = saved[0]
    assert 0 < state.iteration < 150
    resumed = _head()
    resumed.load_state_dict(weights)
    train(resumed, pooler, table, cfg, state, optim, lambda *_: None)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
