"""The ``pretrain`` stage: train a conv trunk with an SPP layer as an image classifier (paper §2.3,
§3.1) and write its checkpoint (``pretrain.classifier``).

Training. Each epoch runs SGD with momentum and weight decay over the training crops
(``pretrain.images.RegionImages``) of the samples (``pretrain.samples``) through the classifier
(``pretrain.model``). The learning rate is divided by 10 when the held-out error (or loss) has not
improved for ``plateau_patience`` epochs, at most ``max_lr_drops`` times. Every tenth image (with
its crops) is held out for that test; it is evaluated on the centre crop at the largest size,
and with several training sizes the test runs at the end of each cycle through them.

Multi-size training (§2.3) is "networks sharing parameters": epoch e runs every crop at
``sizes[e % len(sizes)]`` (180 and 224 in the paper), the same region resized, so sizes differ in
resolution only. The SPP output has the same length at every size, so all sizes share fc6.

Reproducibility. Every random choice of epoch e is a function of (seed, e, sample): the order
from (seed, e), crops, flips and colours from (seed, e, sample index), dropout from the torch
generator reseeded at the start of each epoch. Data-loading threads therefore do not change the
result, the same seed gives the same weights twice on a CPU, and the resume state written after
every epoch (``pretrain.resume``) makes an interrupted run end with the weights of an
uninterrupted one.

Start. From the seeded initialisation, or from a backbone checkpoint (``--weights PATH``,
``pretrain.initial``): its trunk, its fc6/fc7 when they fit, and its preprocessing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.weights import Backbone
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.device import resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import Bar, progress_bar
from sppdet.detector.pretrain.classifier import write_checkpoint
from sppdet.detector.pretrain.images import (
    ColorStats,
    RegionImages,
    batches,
    estimate_color_stats,
    preprocessing_for,
    raise_load_errors,
)
from sppdet.detector.pretrain.initial import apply_start, load_start
from sppdet.detector.pretrain.model import (
    SppClassifier,
    build_classifier,
    check_config,
    check_input_sizes,
)
from sppdet.detector.pretrain.resume import load_state, run_settings, save_state, state_path
from sppdet.detector.pretrain.samples import SampleSet, holdout_split, load_samples
from sppdet.detector.pretrain.views import predict_center

IMPROVEMENT = 1e-4  # relative improvement of the monitored value that resets the plateau count


@dataclass
class Plateau:
    """Learning-rate drops on a plateau: after PATIENCE epochs without a (relative IMPROVEMENT)
    improvement of the monitored value, lr *= factor, at most MAX_DROPS times. A step may stand
    for several EPOCHS (a cycle through the training sizes)."""

    lr: float
    best: float = math.inf
    bad_epochs: int = 0
    drops: int = 0

    def step(
        self, value: float, patience: int, factor: float, max_drops: int, epochs: int = 1
    ) -> bool:
        if value < self.best - IMPROVEMENT * abs(self.best) or math.isinf(self.best):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += epochs
        if self.bad_epochs >= patience and self.drops < max_drops:
            self.lr *= factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False


@dataclass
class PretrainResult:
    out: Path
    state: Path
    classes: tuple[str, ...]
    train_counts: dict[str, int]
    heldout: int
    epochs_done: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Run:
    """One run's samples and training state, handed from step to step of ``pretrain``."""

    cfg: PretrainConfig
    samples: SampleSet
    train_idx: np.ndarray
    held_idx: np.ndarray
    device: torch.device
    model: SppClassifier
    optimizer: torch.optim.Optimizer
    stats: ColorStats
    pre: Preprocessing
    plateau: Plateau
    history: list[dict[str, Any]]
    done: int  # epochs finished before this call
    weights_id: str | None  # the checkpoint the run started from (file:<sha256>); None: random


def default_checkpoint(backbone: str) -> Path:
    """Where ``sppdet pretrain`` writes when no --out is given."""
    return Path(f"pretrain-{backbone}.pt")


def pretrain(
    data: str | Path,
    out: str | Path,
    cfg: PretrainConfig,
    split: str = "trainval",
    classes: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PretrainResult:
    """Train an SPP classifier on DATA's SPLIT and write the checkpoint OUT (module doc).

    LOG receives one line per epoch; ON_BATCH(epoch, batch) runs after every optimizer step.
    """
    start_time = time.perf_counter()
    check_config(cfg)
    say = log or (lambda _: None)
    out = Path(out)
    start = load_start(cfg)
    samples = load_samples(data, split, cfg, classes)
    train_idx, held_idx = holdout_split(samples, cfg.holdout_every)
    settings = run_settings(cfg, samples, split, start.weights_id if start else None)
    state_file = state_path(out)
    state = load_state(state_file, settings) if resume and state_file.is_file() else None
    run = _start_run(cfg, samples, train_idx, held_idx, state, start, progress, say)
    del start  # its tensors are in the model now (a converted fc6 can take hundreds of MB)
    if state is not None:
        say(f"resuming {state_file} after epoch {run.done}")
    remaining = max(0, cfg.epochs - run.done)
    with _epochs_bar(remaining * len(train_idx), progress) as bar:
        for epoch in range(run.done, cfg.epochs):
            record, dropped = _run_epoch(run, epoch, bar, on_batch)
            save_state(state_file, settings, epoch + 1, _training_state(run))
            say(_epoch_line(record, cfg.epochs, dropped, run.plateau.lr))
    epochs = max(run.done, cfg.epochs)
    _write_trained(out, run, split, epochs, fingerprint(settings))
    return PretrainResult(
        out,
        state_file,
        samples.classes,
        samples.subset(train_idx).counts(),
        len(held_idx),
        epochs,
        remaining,
        run.history,
        time.perf_counter() - start_time,
    )


def _start_run(
    cfg: PretrainConfig,
    samples: SampleSet,
    train_idx: np.ndarray,
    held_idx: np.ndarray,
    state: dict[str, Any] | None,
    start: Backbone | None,
    progress: bool,
    say: Callable[[str], None],
) -> _Run:
    """A fresh model (seeded, then START's weights when given) and optimizer, restored from
    STATE when resuming."""
    device = resolve_device(cfg.device)
    model = build_classifier(
        cfg.backbone,
        len(samples.classes),
        cfg.pyramid,
        cfg.fc_dim,
        cfg.dropout,
        cfg.seed,
        cfg.fc8_init_std,
    )
    check_input_sizes(model.trunk, cfg.sizes)
    if state is not None:
        model.load_state_dict(state["model"])
        stats = ColorStats.from_dict(state["color_stats"])
        plateau = Plateau(**state["plateau"])
        history: list[dict[str, Any]] = list(state["history"])
        done = int(state["epoch"])
    else:
        if start is not None:
            took = apply_start(model, start, cfg.weights)
            say(f"starting from {cfg.weights} ({start.weights_id}): {took}")
        stats = estimate_color_stats(samples.subset(train_idx), cfg.seed, progress=progress)
        plateau, history, done = Plateau(cfg.base_lr), [], 0
    pre = start.preprocessing if start is not None else preprocessing_for(cfg.backbone, stats)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=plateau.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        foreach=True,  # one fused update: several times faster on a CPU for many small tensors
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return _Run(
        cfg=cfg,
        samples=samples,
        train_idx=train_idx,
        held_idx=held_idx,
        device=device,
        model=model,
        optimizer=optimizer,
        stats=stats,
        pre=pre,
        plateau=plateau,
        history=history,
        done=done,
        weights_id=start.weights_id if start is not None else None,
    )


def _epochs_bar(total: int, progress: bool) -> AbstractContextManager[Bar | None]:
    """A progress bar over the training images of the epochs left, or none."""
    return progress_bar(total, "pretrain", "img") if progress and total else nullcontext()


def _run_epoch(
    run: _Run, epoch: int, bar: Bar | None, on_batch: Callable[[int, int], None] | None
) -> tuple[dict[str, Any], bool]:
    """Train epoch EPOCH (0-based), test the held-out samples and step the plateau; the epoch's
    history record (appended to RUN's) and whether the learning rate dropped."""
    t0 = time.perf_counter()
    cfg = run.cfg
    size = cfg.sizes[epoch % len(cfg.sizes)]
    if bar is not None:
        bar.note(f"pretrain epoch {epoch + 1}/{cfg.epochs} at {size}px")
    for group in run.optimizer.param_groups:
        group["lr"] = run.plateau.lr
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout masks
    order = np.random.default_rng([cfg.seed, epoch]).permutation(run.train_idx)
    crops = RegionImages(
        run.samples, order, size, run.pre, cfg.crop_fraction, (cfg.seed, epoch, run.stats, cfg)
    )
    record = {
        "epoch": epoch + 1,
        "size": size,
        "lr": run.plateau.lr,
        **_train_epoch(
            run.model,
            run.optimizer,
            batches(crops, cfg.batch_size, cfg.workers),
            run.device,
            epoch,
            bar,
            on_batch,
        ),
        **_heldout(run.model, run.samples, run.held_idx, run.pre, cfg, run.device),
    }
    dropped = _plateau_step(run, record, epoch)
    record["seconds"] = time.perf_counter() - t0
    run.history.append(record)
    return record, dropped


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 29]).generate_state(1)[0])


def _plateau_step(run: _Run, record: dict[str, Any], epoch: int) -> bool:
    """Step the plateau on the held-out value (the training loss without held-out images);
    whether the learning rate dropped."""
    cfg = run.cfg
    monitored = record[f"heldout_{cfg.plateau_metric}"] if len(run.held_idx) else None
    if monitored is None:
        monitored = record["train_loss"]
    # With several sizes the plateau test runs once per cycle through them, so it always
    # compares the model after an epoch at the same size.
    cycle = len(cfg.sizes)
    return (epoch + 1) % cycle == 0 and run.plateau.step(
        monitored, cfg.plateau_patience, cfg.lr_drop, cfg.max_lr_drops, epochs=cycle
    )


def _training_state(run: _Run) -> dict[str, Any]:
    """The entries of the resume state that restore training (``_start_run`` reads them)."""
    return {
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "plateau": asdict(run.plateau),
        "color_stats": run.stats.to_dict(),
        "history": run.history,
    }


def _write_trained(out: Path, run: _Run, split: str, epochs: int, settings_hash: str) -> None:
    """The checkpoint of the trained model with the record ``classify-eval`` reads."""
    cfg, samples = run.cfg, run.samples
    run.model.eval()
    classifier = {
        "classes": list(samples.classes),
        "background": samples.kind == "detection",
        "source_kind": samples.kind,
        "fc_dim": cfg.fc_dim,
        "sizes": [int(s) for s in cfg.sizes],
        "crop_fraction": cfg.crop_fraction,
        "bg_per_image": cfg.bg_per_image,
        "bg_iou": cfg.bg_iou,
        "color_stats": run.stats.to_dict(),
        "epochs": epochs,
        "history": run.history,
        "fingerprint": settings_hash,
    }
    source = (
        f"sppdet pretrain: {cfg.backbone} on {samples.root} ({split}), sizes "
        f"{','.join(map(str, cfg.sizes))}, {epochs} epochs, seed {cfg.seed}"
    )
    if run.weights_id is not None:  # a random start's record stays as it always was
        classifier["weights"] = run.weights_id
        source += f", from {cfg.weights} ({run.weights_id})"
    write_checkpoint(out, run.model, cfg.backbone, run.pre, classifier, source)


def _train_epoch(
    model: SppClassifier,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]],
    device: torch.device,
    epoch: int,
    bar: Bar | None,
    on_batch: Callable[[int, int], None] | None,
) -> dict[str, float]:
    """One pass of SGD over the batches of STREAM; mean training loss and accuracy (dropout on)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (images, labels, errors) in enumerate(stream):
        raise_load_errors(errors)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise SppdetError(
                f"pretrain diverged (loss {loss.item()} at epoch {epoch + 1}); lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if bar is not None:
            bar.advance(len(labels))
        if on_batch is not None:
            on_batch(epoch, step)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def _heldout(
    model: SppClassifier,
    samples: SampleSet,
    held_idx: np.ndarray,
    pre: Preprocessing,
    cfg: PretrainConfig,
    device: torch.device,
) -> dict[str, float | None]:
    """Loss and top-1 error of the held-out samples' centre crops at the largest size."""
    if not len(held_idx):
        return {"heldout_loss": None, "heldout_error": None}
    logits = predict_center(
        model,
        samples,
        held_idx,
        max(cfg.sizes),
        pre,
        cfg.crop_fraction,
        cfg.batch_size,
        cfg.workers,
        device,
    )
    target = torch.as_tensor(samples.labels[held_idx])
    return {
        "heldout_loss": F.cross_entropy(logits, target).item(),
        "heldout_error": (logits.argmax(1) != target).float().mean().item(),
    }


def _epoch_line(record: dict[str, Any], epochs: int, dropped: bool, lr: float) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs} at {record['size']}px: lr {record['lr']:g}, train loss "
        f"{record['train_loss']:.4f}, accuracy {record['train_accuracy']:.3f}"
    )
    if record["heldout_loss"] is not None:
        line += f"; held-out loss {record['heldout_loss']:.4f}, error {record['heldout_error']:.3f}"
    line += f"; {record['seconds']:.1f} s"
    return line + (f"; plateau: lr -> {lr:g}" if dropped else "")
