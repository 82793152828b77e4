"""Fine-tuning fc6, fc7 and a new fc8 on pooled window features read from the conv5 cache.

Windows are the proposals plus the ground-truth boxes of each training image. IoU >= 0.5 is
foreground (the class of the best-overlapping box), IoU in [0.1, 0.5) background. Every mini-batch
has 128 windows, 25% foreground, each pooled at a random cached scale, from the flipped image with
probability 1/2 when the cache holds flips.

Sampling works in rounds so that memory stays bounded on large datasets: a round takes the next
``images_per_round`` images of a seeded shuffle and draws batches from their windows until, on
average, each foreground window was seen once (at most ``max_batches_per_round``). All windows of
a round are pooled up front, one pooling call per image and flip, instead of one per batch. Each
round's randomness derives from (seed, round), so a run resumed from a checkpoint at a round
boundary continues exactly as an uninterrupted run. Everything runs on the device ``train`` is
given: the pooler pools there, the head and the targets are moved there, the fc layers run in
the given precision; a ``RoundReader`` (the training stage's reader thread) can read each round's
maps while the previous round trains.
Every image trains, as in the released code. With ``holdout`` > 0, that fraction of the images,
evenly spread, is held out of training instead, and the log adds the loss and foreground accuracy
of a fixed sample of their windows. The model is always the last iterate: none is selected on
held-out (or test) images, unlike the released code, which kept the best one on VOC07 test.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from sppdet.detector.core.config import FinetuneConfig
from sppdet.detector.core.device import autocast
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.windows import finetune_labels, image_windows

log = logging.getLogger(__name__)

HELDOUT_WINDOWS = 512  # windows of the held-out images the monitor scores (25% foreground)


class PooledFeatures(Protocol):
    """Pooled SPP features of windows of cached images (sppdet.detector.features)."""

    num_scales: int
    has_flip: bool

    def pooled(
        self,
        image_id: str,
        boxes: np.ndarray,
        scales: np.ndarray | None,
        flipped: bool,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor: ...


@dataclass
class WindowTable:
    """All labelled training windows: image index, box (original image coordinates), target."""

    image_ids: list[str]
    image: np.ndarray  # [M] int64
    boxes: np.ndarray  # [M, 4] float32
    target: np.ndarray  # [M] int64, 0 = background, k + 1 = class k

    @classmethod
    def build(
        cls,
        records: list[ImageRecord],
        proposals: Callable[[str], np.ndarray],
        num_classes: int,
        cfg: FinetuneConfig,
    ) -> WindowTable:
        images, boxes, targets = [], [], []
        for i, record in enumerate(records):
            windows = image_windows(record, proposals(record.image_id), num_classes)
            target = finetune_labels(windows, record.labels, cfg.fg_iou, cfg.bg_iou_low)
            used = target >= 0
            images.append(np.full(int(used.sum()), i, np.int64))
            boxes.append(windows.boxes[used])
            targets.append(target[used])
        return cls(
            [r.image_id for r in records],
            np.concatenate(images) if images else np.zeros(0, np.int64),
            np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
            np.concatenate(targets) if targets else np.zeros(0, np.int64),
        )

    def subset(self, images: np.ndarray) -> np.ndarray:
        """Row indices of the windows of the given image indices."""
        return np.nonzero(np.isin(self.image, images))[0]


@dataclass
class Batch:
    rows: np.ndarray  # [B] rows of the window table
    scales: np.ndarray  # [B] scale indices
    flipped: np.ndarray  # [B] bool


def split_holdout(num_images: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) image indices. FRACTION 0: every image trains. Else k =
    round(FRACTION * NUM_IMAGES) images, at least one and never all, evenly spread: image i is
    held out when floor((i + 1) k / n) > floor(i k / n) (for 0.1: every tenth image)."""
    index = np.arange(num_images)
    if fraction <= 0 or num_images < 2:
        return index, np.zeros(0, np.int64)
    count = min(num_images - 1, max(1, math.floor(fraction * num_images + 0.5)))
    held = (index + 1) * count // num_images > index * count // num_images
    return index[~held], index[held]


def round_batches(
    table: WindowTable,
    train_images: np.ndarray,
    cfg: FinetuneConfig,
    num_scales: int,
    has_flip: bool,
    round_index: int,
) -> list[Batch]:
    """The mini-batches of round ROUND_INDEX; they depend only on (seed, round)."""
    n_fg = round(cfg.batch_size * cfg.fg_fraction)
    n_bg = cfg.batch_size - n_fg
    rounds_per_epoch = max(1, math.ceil(len(train_images) / cfg.images_per_round))
    epoch, position = divmod(round_index, rounds_per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(train_images)
    chosen = order[position * cfg.images_per_round : (position + 1) * cfg.images_per_round]
    rows = table.subset(chosen)
    fg = rows[table.target[rows] > 0]
    bg = rows[table.target[rows] == 0]
    if len(fg) + len(bg) == 0:
        return []
    rng = np.random.default_rng([cfg.seed, 1_000_003, round_index])
    count = min(cfg.max_batches_per_round, max(1, math.ceil(len(fg) / max(n_fg, 1))))
    out = []
    for _ in range(count):
        parts = []
        if len(fg):
            parts.append(rng.choice(fg, size=n_fg if len(bg) else cfg.batch_size))
        if len(bg):
            parts.append(rng.choice(bg, size=n_bg if len(fg) else cfg.batch_size))
        picked = np.concatenate(parts)
        flips = rng.random(len(picked)) < 0.5 if has_flip else np.zeros(len(picked), bool)
        out.append(Batch(picked, rng.integers(0, num_scales, len(picked)), flips))
    return out


def pool_batch(
    pooler: PooledFeatures,
    table: WindowTable,
    rows: np.ndarray,
    scales: np.ndarray | None,
    flipped: np.ndarray,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pooled features of table ROWS, one pooler call per (image, flip) group, in ROWS order."""
    key = table.image[rows] * 2 + flipped.astype(np.int64)
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
    chunks = []
    for begin, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        group = order[begin:end]
        image_id = table.image_ids[int(table.image[rows[group[0]]])]
        group_scales = None if scales is None else scales[group]
        chunks.append(
            pooler.pooled(
                image_id,
                table.boxes[rows[group]],
                group_scales,
                bool(flipped[group[0]]),
                dtype=dtype,
            )
        )
    out = torch.cat(chunks)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    return out[inverse.to(out.device)]


def learning_rate(cfg: FinetuneConfig, iteration: int) -> float:
    drops = sum(iteration >= step for step in cfg.lr_steps)
    return cfg.base_lr * cfg.lr_gamma**drops


@dataclass
class HeldOut:
    features: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def sample(
        cls, pooler: PooledFeatures, table: WindowTable, images: np.ndarray, size: int, seed: int
    ) -> HeldOut | None:
        rows = table.subset(images)
        if len(rows) == 0:
            return None
        rng = np.random.default_rng([seed, 7])
        fg, bg = rows[table.target[rows] > 0], rows[table.target[rows] == 0]
        n_fg = min(len(fg), size // 4)
        picked = np.concatenate([rng.permutation(fg)[:n_fg], rng.permutation(bg)[: size - n_fg]])
        feats = pool_batch(pooler, table, picked, None, np.zeros(len(picked), bool))
        return cls(feats, torch.as_tensor(table.target[picked]).to(feats.device))

    def evaluate(self, head: FcHead) -> dict[str, float]:
        head.eval()
        with torch.no_grad():
            logits = head(self.features)
        head.train()
        loss = nn.functional.cross_entropy(logits, self.targets).item()
        fg = self.targets > 0
        correct = logits.argmax(1) == self.targets
        fg_acc = correct[fg].float().mean().item() if fg.any() else float("nan")
        return {
            "heldout_loss": loss,
            "heldout_fg_accuracy": fg_acc,
            "heldout_accuracy": correct.float().mean().item(),
        }


class TrainMeter:
    """Loss and foreground accuracy of the training batches since the last ``report``, summed
    on the device (reading them back each batch would sync it)."""

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None  # loss sum, foreground right, foreground, batches

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        fg = targets > 0
        right = (logits.argmax(1) == targets) & fg
        loss = loss.float()
        batch = torch.stack([loss, right.sum().float(), fg.sum().float(), torch.ones_like(loss)])
        self._sums = batch if self._sums is None else self._sums + batch

    def report(self) -> dict[str, float]:
        """Mean loss and foreground accuracy since the last report (or the start or resume)."""
        sums, self._sums = self._sums, None
        if sums is None or sums.is_meta:  # no batch, or a shapes-only (meta) run: no values
            return {"train_loss": float("nan"), "train_fg_accuracy": float("nan")}
        loss, right, fg, batches = sums.tolist()
        return {
            "train_loss": loss / batches,
            "train_fg_accuracy": right / fg if fg else float("nan"),
        }


@dataclass
class TrainState:
    iteration: int
    round_index: int
    history: list[dict[str, float]]


@dataclass
class Round:
    """Round INDEX of the sampling and its mini-batches (``round_batches``)."""

    index: int
    batches: list[Batch]

    def rows(self) -> np.ndarray:
        return np.concatenate([b.rows for b in self.batches])


def plan_rounds(
    table: WindowTable,
    train_images: np.ndarray,
    cfg: FinetuneConfig,
    num_scales: int,
    has_flip: bool,
    start: int,
) -> Iterator[Round]:
    """Rounds START, START + 1, ... without end; each depends only on (seed, round)."""
    for index in itertools.count(start):
        yield Round(index, round_batches(table, train_images, cfg, num_scales, has_flip, index))


class RoundReader(Protocol):
    """Turns the planned rounds into rounds whose conv5 maps are read, e.g. by a background
    thread that reads the next round while this one trains (``training.finetune``)."""

    def __call__(self, rounds: Iterator[Round]) -> Iterator[Round]: ...


class TrainClock(Protocol):
    """Told when a round's windows are pooled and when each batch is done (for the ETA)."""

    def round_pooled(self, batches: int) -> None: ...

    def batch_done(self, iteration: int) -> None: ...


def _optimizer(head: FcHead, cfg: FinetuneConfig, optimizer_state: dict | None) -> torch.optim.SGD:
    """SGD with momentum and weight decay on HEAD, resumed from OPTIMIZER_STATE when given. As
    the released solver (pascal_finetune_fc_spm_train.prototxt): biases learn ``bias_lr_factor``
    times faster, and fc8's bias has no weight decay. Each group's ``lr_factor`` scales the
    learning rate ``train`` sets."""
    decay, factor = cfg.weight_decay, cfg.bias_lr_factor
    groups = [
        {"params": [head.fc6.weight, head.fc7.weight, head.fc8.weight], "lr_factor": 1.0},
        {"params": [head.fc6.bias, head.fc7.bias], "lr_factor": factor},
        {"params": [head.fc8.bias], "lr_factor": factor, "weight_decay": 0.0},
    ]
    assert sum(len(g["params"]) for g in groups) == len(list(head.parameters()))
    optimizer = torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    return optimizer


def train(
    head: FcHead,
    pooler: PooledFeatures,
    table: WindowTable,
    cfg: FinetuneConfig,
    state: TrainState,
    optimizer_state: dict | None,
    save: Callable[[TrainState, dict], None],
    clock: TrainClock | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    reader: RoundReader | None = None,
    on_history: Callable[[dict[str, float]], None] | None = None,
) -> TrainState:
    """SGD with momentum and weight decay on fc6-fc8; checkpoints through SAVE at round ends.

    Everything runs on DEVICE (the head is moved there; POOLER pools onto it): a round's
    windows are pooled in one pass, then each batch's forward and backward, with the fc layers
    in PRECISION (autocast; fp16 with loss scaling). READER, when given, reads each round's
    maps ahead. Dropout is reseeded at every round from (seed, round), so resuming is exact.
    ON_HISTORY, when given, gets each history entry as it is logged (the training report).
    """
    device = torch.device(device)
    head.to(device)
    train_images, held_images = split_holdout(len(table.image_ids), cfg.holdout)
    held = HeldOut.sample(pooler, table, held_images, HELDOUT_WINDOWS, cfg.seed)
    meter = TrainMeter()
    optimizer = _optimizer(head, cfg, optimizer_state)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    head.train()
    iteration, round_index, last_saved = state.iteration, state.round_index, state.iteration
    rounds = plan_rounds(
        table, train_images, cfg, pooler.num_scales, pooler.has_flip, state.round_index
    )
    if reader is not None:
        rounds = reader(rounds)
    try:
        for planned in rounds:
            if iteration >= cfg.iterations:
                break
            # A round boundary: the only place to save, so that resuming is exact.
            if iteration - last_saved >= cfg.checkpoint_every:
                save(TrainState(iteration, round_index, state.history), optimizer.state_dict())
                last_saved = iteration
            torch.manual_seed(cfg.seed * 1_000_003 + planned.index)
            round_index = planned.index + 1
            if not planned.batches:
                continue
            # One pooling call per (image, flip) for the whole round, kept in float16.
            features = pool_batch(
                pooler,
                table,
                planned.rows(),
                np.concatenate([b.scales for b in planned.batches]),
                np.concatenate([b.flipped for b in planned.batches]),
                dtype=torch.float16,
            )
            targets = torch.as_tensor(table.target[planned.rows()]).to(device)
            if clock is not None:
                clock.round_pooled(len(planned.batches))
            offset = 0
            for batch in planned.batches:
                if iteration >= cfg.iterations:
                    break
                x = features[offset : offset + len(batch.rows)].float()
                y = targets[offset : offset + len(batch.rows)]
                offset += len(batch.rows)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, iteration) * group["lr_factor"]
                meter.add(*_step(head, optimizer, scaler, x, y, device, precision), y)
                iteration += 1
                if clock is not None:
                    clock.batch_done(iteration)
                if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                    metrics = {"lr": learning_rate(cfg, iteration - 1), **meter.report()}
                    if held is not None:
                        metrics.update(held.evaluate(head))
                    _log(state.history, iteration, metrics)
                    if on_history is not None:
                        on_history(state.history[-1])
    finally:
        close = getattr(rounds, "close", None)
        if close is not None:
            close()  # stops a reader thread
    head.eval()
    return TrainState(iteration, round_index, state.history)


def _step(
    head: FcHead,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    x: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on batch X; returns the loss and the logits, detached (on the device:
    reading them syncs)."""
    with autocast(device, precision):
        logits = head(x)
        loss = nn.functional.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: scale the loss so small gradients do not flush to zero
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


def _log(history: list[dict[str, float]], iteration: int, metrics: dict[str, float]) -> None:
    history.append({"iteration": iteration, **metrics})
    log.info("iteration %d: %s", iteration, describe_metrics(metrics))


def describe_metrics(metrics: dict[str, float]) -> str:
    """One line of a history entry: learning rate, training loss and foreground accuracy (the
    mean since the previous entry), and the held-out ones when there are held-out images."""
    line = (
        f"lr {metrics['lr']:.3g}, train loss {metrics['train_loss']:.4f}, "
        f"foreground accuracy {metrics['train_fg_accuracy']:.3f}"
    )
    if "heldout_loss" in metrics:
        line += (
            f"; held-out loss {metrics['heldout_loss']:.4f}, "
            f"foreground accuracy {metrics['heldout_fg_accuracy']:.3f}"
        )
    return line
