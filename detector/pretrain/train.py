"""``pretrain``: train a conv trunk with an SPP layer as an image classifier (paper §2.3, §3).

Data. An image-folder tree (one folder per class; ``DATA/<split>/`` when that folder exists, else
``DATA`` itself) or a detection dataset (VOC tree or COCO JSON), which becomes K+1 classes: the
ground-truth objects (difficult ones left out) and ``bg_per_image`` background boxes per image,
drawn at random sizes and places with IoU < 0.3 to every object (class 0, "background"). A sample
is a region of an image: the whole image, or a box grown by 1/crop_fraction around its centre,
so that the centre crop of the region is about the box itself.

Training (paper §3.1). A square crop of side ``crop_fraction`` (224/256) of the region's shorter
side at a random place, resized to the epoch's input size, flipped with probability 1/2, colour
altered (AlexNet's PCA lighting plus brightness/contrast/saturation factors), normalised with the
training set's per-channel mean and standard deviation (recorded as the checkpoint's
preprocessing, in the trunk's channel order and pixel range). conv1-5, SPP over the whole conv5
map (``spp.image_spp``), fc6/fc7 with dropout and fc8 (``heads.FcHead``). SGD with momentum and
weight decay; the learning rate is divided by 10 when the held-out error (or loss) has not
improved for ``plateau_patience`` epochs, at most ``max_lr_drops`` times. Every tenth image (with
its crops) is held out for that test; it is evaluated on the centre crop at the largest size,
and with several training sizes the test runs at the end of each cycle through them.

Multi-size training (§2.3) is "networks sharing parameters": epoch e runs every crop at
``sizes[e % len(sizes)]`` (180 and 224 in the paper), the same region resized, so sizes differ in
resolution only. The SPP output has the same length at every size, so all sizes share fc6.

Reproducibility and resume. Every random choice of epoch e is a function of (seed, e, sample):
the order from (seed, e), crops, flips and colours from (seed, e, sample index), dropout from the
torch generator reseeded at the start of each epoch. Data-loading threads therefore do not
change the result, the same seed gives the same weights twice on a CPU, and the resume state
written (atomically) after every epoch lets an interrupted run restart its unfinished epoch and
end with the weights an uninterrupted run would have. The state holds the model, the optimizer
(momentum), the plateau counters, the colour statistics and the history; its settings
fingerprint covers the data and every setting except ``epochs``, ``workers`` and ``device``, so
the same command resumes, a longer ``--epochs`` continues, and other settings are refused.

Output. A backbone checkpoint (``nets.save_backbone_checkpoint``: conv1-5, fc6, fc7, pyramid,
preprocessing) that ``cache-features --weights`` and fine-tuning read as is, plus one key the
backbone format passes through, ``classifier``: the class names, fc8, and the training record
that ``classify-eval`` needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sppdet.cache.atomic import TMP_MARK, atomic_output
from sppdet.cache.fingerprint import differences, fingerprint
from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.core.config import PretrainConfig, as_dict
from sppdet.detector.core.device import resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.pretrain.images import (
    ColorStats,
    RegionImages,
    batches,
    estimate_color_stats,
    preprocessing_for,
    raise_load_errors,
)
from sppdet.detector.pretrain.model import (
    SppClassifier,
    build_classifier,
    check_config,
    check_input_sizes,
)
from sppdet.detector.pretrain.samples import SampleSet, holdout_split, load_samples

STATE_FORMAT = "sppdet-pretrain-state"


STATE_VERSION = 1


CLASSIFIER_KEY = "classifier"  # the extra checkpoint entry classify-eval reads


RUN_SETTINGS = ("epochs", "workers", "device")  # settings a resumed run may change


@dataclass
class Plateau:
    """Learning-rate drops on a plateau: after PATIENCE epochs without a (relative 1e-4)
    improvement of the monitored value, lr *= factor, at most MAX_DROPS times. A step may stand
    for several EPOCHS (a cycle through the training sizes)."""

    lr: float
    best: float = math.inf
    bad_epochs: int = 0
    drops: int = 0

    def step(
        self, value: float, patience: int, factor: float, max_drops: int, epochs: int = 1
    ) -> bool:
        if value < self.best - 1e-4 * abs(self.best) or math.isinf(self.best):
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


def state_path(out: str | Path) -> Path:
    """The resume state beside the checkpoint: ``name.pt`` -> ``name.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 29]).generate_state(1)[0])


def predict_center(
    model: SppClassifier,
    samples: SampleSet,
    index: np.ndarray,
    size: int,
    pre: Preprocessing,
    fraction: float,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits [len(index), K] (CPU) of the centre-crop view of the samples INDEX."""
    was_training = model.training
    model.eval()
    out = []
    data = RegionImages(samples, index, size, pre, fraction)
    with torch.inference_mode():
        for images, _, errors in batches(data, batch_size, workers):
            raise_load_errors(errors)
            out.append(model(images.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(samples.classes))


def _settings(cfg: PretrainConfig, samples: SampleSet, split: str) -> dict[str, Any]:
    kept = {k: v for k, v in as_dict(cfg).items() if k not in RUN_SETTINGS}
    return {"pretrain": kept, "split": split, "data": samples.describe()}


def _load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SppdetError(
            f"{path}: unreadable resume state ({reason}); delete it or rerun with --no-resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SppdetError(f"{path}: not a pretrain resume state; delete it or pass another --out")
    if state.get("version") != STATE_VERSION:
        raise SppdetError(f"{path}: resume state version {state.get('version')!r} unsupported")
    if state["fingerprint"] != fingerprint(settings):
        diff = differences(_flatten(settings), _flatten(state["settings"]))
        raise SppdetError(
            f"{path}: resume state made with other settings ({'; '.join(diff[:3])}); rerun with "
            "--no-resume to start over, or choose another --out"
        )
    return state


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def write_checkpoint(
    out: Path,
    model: SppClassifier,
    arch: str,
    pre: Preprocessing,
    classifier: dict[str, Any],
    source: str,
) -> Path:
    """The backbone checkpoint (written by nets.save_backbone_checkpoint) plus the
    ``classifier`` entry, which the backbone format carries through unread."""
    staged = out.with_name(f"{out.name}{TMP_MARK}backbone")
    try:
        save_backbone_checkpoint(
            staged,
            arch,
            model.trunk,
            pre,
            head=model.head,
            head_pyramid=model.pyramid,
            source=source,
        )
        payload = torch.load(staged, map_location="cpu", weights_only=True)
        head = model.head.state_dict()
        payload[CLASSIFIER_KEY] = {
            **classifier,
            "fc8.weight": head["fc8.weight"].detach().cpu().clone(),
            "fc8.bias": head["fc8.bias"].detach().cpu().clone(),
        }
        with atomic_output(out) as tmp:
            torch.save(payload, tmp)
    finally:
        staged.unlink(missing_ok=True)
    return out


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
    samples = load_samples(data, split, cfg, classes)
    train_idx, held_idx = holdout_split(samples, cfg.holdout_every)
    settings = _settings(cfg, samples, split)
    state_file = state_path(out)
    state = _load_state(state_file, settings) if resume and state_file.is_file() else None
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
        say(f"resuming {state_file} after epoch {done}")
    else:
        stats = estimate_color_stats(samples.subset(train_idx), cfg.seed, progress=progress)
        plateau, history, done = Plateau(cfg.base_lr), [], 0
    pre = preprocessing_for(cfg.backbone, stats)
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

    remaining = max(0, cfg.epochs - done)
    bar_context = (
        progress_bar(remaining * len(train_idx), "pretrain", "img")
        if progress and remaining
        else nullcontext()
    )
    with bar_context as bar:
        for epoch in range(done, cfg.epochs):
            t0 = time.perf_counter()
            size = cfg.sizes[epoch % len(cfg.sizes)]
            if bar is not None:
                bar.note(f"pretrain epoch {epoch + 1}/{cfg.epochs} at {size}px")
            for group in optimizer.param_groups:
                group["lr"] = plateau.lr
            torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout masks
            order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)
            data_epoch = RegionImages(
                samples, order, size, pre, cfg.crop_fraction, (cfg.seed, epoch, stats, cfg)
            )
            record = {
                "epoch": epoch + 1,
                "size": size,
                "lr": plateau.lr,
                **_train_epoch(
                    model,
                    optimizer,
                    batches(data_epoch, cfg.batch_size, cfg.workers),
                    device,
                    epoch,
                    bar,
                    on_batch,
                ),
                **_heldout(model, samples, held_idx, pre, cfg, device),
            }
            monitored = record[f"heldout_{cfg.plateau_metric}"] if len(held_idx) else None
            if monitored is None:
                monitored = record["train_loss"]  # no held-out images: the training loss
            # With several sizes the plateau test runs once per cycle through them, so it always
            # compares the model after an epoch at the same size.
            cycle = len(cfg.sizes)
            dropped = (epoch + 1) % cycle == 0 and plateau.step(
                monitored, cfg.plateau_patience, cfg.lr_drop, cfg.max_lr_drops, epochs=cycle
            )
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            _save_state(
                state_file,
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "fingerprint": fingerprint(settings),
                    "settings": settings,
                    "epoch": epoch + 1,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "plateau": asdict(plateau),
                    "color_stats": stats.to_dict(),
                    "history": history,
                },
            )
            say(_epoch_line(record, cfg.epochs, dropped, plateau.lr))

    model.eval()
    epochs = max(done, cfg.epochs)
    classifier = {
        "classes": list(samples.classes),
        "background": samples.kind == "detection",
        "source_kind": samples.kind,
        "fc_dim": cfg.fc_dim,
        "sizes": [int(s) for s in cfg.sizes],
        "crop_fraction": cfg.crop_fraction,
        "bg_per_image": cfg.bg_per_image,
        "bg_iou": cfg.bg_iou,
        "color_stats": stats.to_dict(),
        "epochs": epochs,
        "history": history,
        "fingerprint": fingerprint(settings),
    }
    source = (
        f"sppdet pretrain: {cfg.backbone} on {samples.root} ({split}), sizes "
        f"{','.join(map(str, cfg.sizes))}, {epochs} epochs, seed {cfg.seed}"
    )
    write_checkpoint(out, model, cfg.backbone, pre, classifier, source)
    return PretrainResult(
        out,
        state_file,
        samples.classes,
        samples.subset(train_idx).counts(),
        len(held_idx),
        epochs,
        remaining,
        history,
        time.perf_counter() - start_time,
    )


def _train_epoch(
    model: SppClassifier,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]],
    device: torch.device,
    epoch: int,
    bar: Any,
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
