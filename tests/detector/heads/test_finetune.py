"""Tests of ``sppdet.detector.heads.finetune``.

Fine-tuning: batch composition, the learning-rate schedule, which images train (all, or all but
the held-out fraction), the logged metrics, learning, and exact resume.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import FinetuneConfig
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import (
    TrainMeter,
    TrainState,
    WindowTable,
    _optimizer,
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
        self.calls: list[tuple[str, bool, bool]] = []  # (image, flipped, for training)

    def pooled(self, image_id, boxes, scales, flipped, dtype=torch.float32):  # type: ignore[no-untyped-def]
        # Training pools at random scales; the held-out sample at the best scale (None).
        self.calls.append((image_id, flipped, scales is not None))
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


def test_learning_rate_schedule() -> None:
    cfg = FinetuneConfig()  # released: 1e-3, x0.1 at 30k and 60k
    rates = [learning_rate(cfg, i) for i in (0, 29_999, 30_000, 60_000)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-12)


def test_biases_learn_twice_as_fast_and_fc8_bias_has_no_decay() -> None:
    # The released prototxt: blobs_lr 1 (weights) and 2 (biases); weight_decay 0 on fc8's bias.
    # One SGD step from an empty momentum buffer: p <- p - lr * factor * (grad + decay * p).
    torch.manual_seed(0)
    head = FcHead(in_dim=5, hidden=4, num_outputs=3, dropout=0.0)
    with torch.no_grad():
        for param in head.parameters():
            param.uniform_(-1, 1)
    cfg = FinetuneConfig(base_lr=0.1, weight_decay=0.01)
    before = {name: p.detach().clone() for name, p in head.named_parameters()}
    optimizer = _optimizer(head, cfg, None)
    for group in optimizer.param_groups:  # as train() sets them
        group["lr"] = learning_rate(cfg, 0) * group["lr_factor"]
    head(torch.randn(6, 5)).square().sum().backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters()}
    optimizer.step()
    for name, param in head.named_parameters():
        factor = 2.0 if name.endswith("bias") else 1.0
        decay = 0.0 if name == "fc8.bias" else 0.01
        want = before[name] - 0.1 * factor * (grads[name] + decay * before[name])
        torch.testing.assert_close(param.detach(), want, msg=name)


def test_split_holdout_by_hand() -> None:
    # k = round(f n) images held out, image i when floor((i + 1) k / n) > floor(i k / n).
    cases = {
        (25, 0.0): [],  # the default: every image trains
        (30, 0.1): [9, 19, 29],  # k = 3: every tenth image
        (25, 0.1): [8, 16, 24],  # k = round(2.5) = 3: at 9/25, 17/25, 25/25 of the list
        (4, 0.5): [1, 3],
        (10, 0.01): [9],  # round(0.1) = 0, but a monitor asked for holds one image out
        (3, 0.99): [1, 2],  # round(2.97) = 3 would leave nothing to train on: k = 2
        (1, 0.5): [],  # one image: it trains
    }
    for (n, fraction), held in cases.items():
        train_images, got = split_holdout(n, fraction)
        assert got.tolist() == held, (n, fraction)
        assert sorted([*train_images.tolist(), *held]) == list(range(n))


def test_meter_means_since_the_last_report() -> None:
    meter = TrainMeter()
    targets = torch.tensor([0, 1, 2, 2])  # three foreground windows
    right_two = torch.tensor([[9.0, 0, 0], [0, 9, 0], [0, 9, 0], [0, 0, 9]])  # fg: 2 of 3 right
    right_all = torch.tensor([[0.0, 9, 0], [0, 9, 0], [0, 0, 9], [0, 0, 9]])  # bg wrong, fg 3/3
    meter.add(torch.tensor(0.5), right_two, targets)
    meter.add(torch.tensor(1.5), right_all, targets)
    report = meter.report()
    assert report["train_loss"] == pytest.approx(1.0, rel=1e-6)  # (0.5 + 1.5) / 2
    assert report["train_fg_accuracy"] == pytest.approx(5 / 6, rel=1e-6)
    meter.add(torch.tensor(0.25), right_two, targets)  # a report starts a new interval
    assert meter.report() == pytest.approx({"train_loss": 0.25, "train_fg_accuracy": 2 / 3})


def _head() -> FcHead:
    torch.manual_seed(0)
    head = FcHead(in_dim=NUM_CLASSES + 3, hidden=16, num_outputs=NUM_CLASSES + 1, dropout=0.0)
    head.init_fc8(0.01)
    return head


def _trained_images(pooler: GeometryPooler) -> tuple[set[str], set[str]]:
    """Images pooled for training batches and for the held-out sample."""
    trained = {image for image, _, training in pooler.calls if training}
    return trained, {image for image, _, training in pooler.calls if not training}


def test_every_image_trains_by_default_and_flips_are_used() -> None:
    records = _records(20)
    cfg = _cfg(iterations=60)  # 20 images in rounds of 4: every image within the first epoch
    assert cfg.holdout == FinetuneConfig().holdout == 0
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    pooler = GeometryPooler(records)
    final = train(_head(), pooler, table, cfg, TrainState(0, 0, []), None, lambda *_: None)
    trained, held_out = _trained_images(pooler)
    assert trained == {r.image_id for r in records} and not held_out
    assert {flipped for _, flipped, _ in pooler.calls} == {False, True}
    assert [e["iteration"] for e in final.history] == [20, 40, 60]
    assert all(
        sorted(e) == ["iteration", "lr", "train_fg_accuracy", "train_loss"] for e in final.history
    )
    assert [e["lr"] for e in final.history] == [0.05, 0.05, 0.05]


def test_the_holdout_fraction_keeps_its_images_out_of_training() -> None:
    records = _records(20)
    cfg = _cfg(iterations=60, holdout=0.25)
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    pooler = GeometryPooler(records)
    final = train(_head(), pooler, table, cfg, TrainState(0, 0, []), None, lambda *_: None)
    trained, held_out = _trained_images(pooler)
    held = {f"im{i}" for i in (3, 7, 11, 15, 19)}  # k = 5 of 20: every fourth
    assert held_out == held and trained == {r.image_id for r in records} - held
    assert all("heldout_loss" in e and "heldout_fg_accuracy" in e for e in final.history)


def test_training_learns_and_resume_is_exact() -> None:
    records = _records(20)
    cfg = _cfg(holdout=0.1)
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    pooler = GeometryPooler(records)

    head = _head()
    saved: list[tuple[TrainState, dict, dict]] = []

    def save(state: TrainState, optim: dict) -> None:
        saved.append((copy.deepcopy(state), copy.deepcopy(optim), copy.deepcopy(head.state_dict())))

    final = train(head, pooler, table, cfg, TrainState(0, 0, []), None, save)
    assert final.iteration == 150
    # chance is 1/2 among foreground classes
    assert final.history[-1]["heldout_fg_accuracy"] > 0.9
    assert final.history[-1]["heldout_loss"] < 0.5 * final.history[0]["heldout_loss"]
    assert final.history[-1]["train_loss"] < 0.5 * final.history[0]["train_loss"]

    # Resume from the first checkpoint: the same weights as the uninterrupted run.
    state, optim, weights = saved[0]
    assert 0 < state.iteration < 150
    resumed = _head()
    resumed.load_state_dict(weights)
    train(resumed, pooler, table, cfg, state, optim, lambda *_: None)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
