"""The ``finetune`` stage: fc6, fc7 and a new fc8 trained on pooled windows of the conv5 cache.

``build_head`` makes the head to fine-tune: fc6/fc7 from the backbone the cache was built with
when it has usable ones, else random (seeded; fc6's input then scaled to a mean norm), and fc8
N(0, 0.01). ``run_finetune`` runs the SGD loop of ``heads.finetune`` over the split's labelled
windows, checkpointing to WORK/models/finetune-partial.pt so an interrupted run resumes, and
saves WORK/models/finetune.pt with the fingerprint of its inputs; ``load_head`` reads it back
for the stages that use the fine-tuned features.

The loop runs on the runtime's device: a reader thread decodes the next round's conv5 maps
(``RoundMaps``) while the current round pools and trains there. The first round's timing gives
the stage's ETA, announced when it is over an hour (``runtime.EtaCheck``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import compare_settings, fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.core.config import RANDOM_FC6_NORM_SAMPLE_WINDOWS, FinetuneConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import Bar, progress_bar
from sppdet.detector.features.reader import FeatureCache, MapKey
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import HeldOut, Round, TrainState, WindowTable, train
from sppdet.detector.training.inputs import (
    SplitInputs,
    UpToDate,
    WindowFeatures,
    feature_settings_fingerprint,
    host,
    same_window_features,
    sample_norm_scale,
    up_to_date,
)
from sppdet.detector.training.prefetch import Prefetcher
from sppdet.detector.training.report import MetricsLog
from sppdet.detector.training.runtime import (
    ETA_WARMUP_ITEMS,
    EtaCheck,
    PrecisionDrift,
    Runtime,
    precision_setting,
)

log = logging.getLogger(__name__)

SHORTER_FINETUNE = "--iterations N"  # the ETA warning's advice
READ_AHEAD_ROUNDS = 1  # rounds whose maps are read while the current round trains
DRIFT_WINDOWS = 512  # windows (of every image) the precision drift is measured on


def build_head(
    cache: WindowFeatures, work: WorkDir, split: str, num_classes: int, cfg: FinetuneConfig
) -> tuple[FcHead, str, bool]:
    """A new head for the cache's pooled features: fc6/fc7 from the backbone when it has usable
    ones, else random; fc8 N(0, 0.01). Returns the head, a line saying where fc6/fc7 came from,
    and whether fc6 is pretrained.
    """
    recorded = work.recorded(cache.stage, split) or {}
    weights = recorded.get("features", {}).get("weights", "random")
    state: dict[str, torch.Tensor] = {}
    if weights != "random":
        weights_id, _ = describe_weights(cache.arch, weights)
        if weights_id != cache.params["weights"]:
            raise SppdetError(
                f"{weights}: these weights changed since the cache was built; rerun "
                f"`{cache.made_by} --split {split} --force`"
            )
        state = load_backbone(cache.arch, weights).head_state(cache.pyramid)
    hidden = int(state["fc7.weight"].shape[0]) if "fc7.weight" in state else cfg.fc_dim
    torch.manual_seed(cfg.seed)  # layers without pretrained weights keep torch's default init
    head = FcHead(cache.dim, hidden, num_classes + 1, cfg.dropout)
    for layer in ("fc6", "fc7"):
        if f"{layer}.weight" in state:
            getattr(head, layer).load_state_dict(
                {"weight": state[f"{layer}.weight"], "bias": state[f"{layer}.bias"]}
            )
    head.init_fc8(cfg.fc8_init_std, torch.Generator().manual_seed(cfg.seed))
    loaded = [layer for layer in ("fc6", "fc7") if f"{layer}.weight" in state]
    origin = (
        f"fc6/fc7: {', '.join(loaded)} from {weights}, the rest random"
        if loaded
        else "fc6/fc7: randomly initialised (the backbone has no usable fc6/fc7)"
    )
    return head, origin, "fc6" in loaded


def _finetune_fingerprint(
    inputs: SplitInputs, cfg: FinetuneConfig, runtime: Runtime
) -> dict[str, Any]:
    return {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(inputs.cache),
        "classes": list(inputs.dataset.classes),
        "finetune": as_dict(cfg),
        **precision_setting(runtime),
    }


@dataclass(frozen=True)
class FinetuneResult:
    """What ``run_finetune`` trained: the model file, its batches and training metrics."""

    model: Path
    iterations: int
    history: list[dict[str, float]]  # every ``log_every`` batches (heads.finetune._log)
    origin: str  # where fc6/fc7 came from, and fc6's input scale when it is random
    data_wait_share: float = 0.0  # of the loop's time, spent waiting for conv5 maps
    drift: PrecisionDrift | None = None  # with --precision bf16/fp16: logits vs fp32


def run_finetune(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: FinetuneConfig,
    force: bool = False,
    runtime: Runtime | None = None,
    tensorboard: str | Path | None = None,
) -> FinetuneResult | UpToDate:
    """Fine-tune fc6-fc8 on the runtime's device; resumes from WORK/models/finetune-partial.pt
    when its inputs and settings match (else refused, naming the settings that differ). Each
    history entry goes to WORK/reports/finetune.csv and, given a folder, to TENSORBOARD."""
    runtime = runtime or Runtime()
    if not 0 <= cfg.holdout < 1:
        raise SppdetError(
            f"--holdout {cfg.holdout}: not a fraction of the images; give one in [0, 1), "
            "e.g. 0.1, or 0 to train on every image"
        )
    inputs.check_images()
    inputs.to(runtime.device)
    made = _finetune_fingerprint(inputs, cfg, runtime)
    key = fingerprint(made)
    if not force and up_to_date(work, "finetune", made):
        return UpToDate(work.model("finetune"))
    metrics = MetricsLog(work, "finetune", step="iteration", tensorboard=tensorboard)
    head, origin = new_head(work, inputs, cfg)
    log.info("%s", origin)
    state, optimizer_state = TrainState(0, 0, []), None
    if work.model("finetune-partial").is_file() and not force:
        state, optimizer_state = _resume(work, head, made)
    table = _window_table(work, inputs, cfg)
    with metrics.start(state.history, state.iteration):  # a resume keeps its checkpoint's rows
        final, wait_share = _train(
            work, inputs, head, table, cfg, made, state, optimizer_state, runtime, metrics.add
        )
    drift = _drift(inputs, head, table, cfg, runtime)
    head.to("cpu")  # the saved model loads anywhere
    payload = {
        "fingerprint": key,
        "made_from": made,
        "head": head.state_dict(),
        "in_dim": inputs.cache.dim,
        "hidden": head.fc7.out_features,
        "classes": list(inputs.dataset.classes),
        "history": final.history,
        "origin": origin,
    }
    path = work.save_model("finetune", payload)
    work.model("finetune-partial").unlink(missing_ok=True)
    return FinetuneResult(path, final.iteration, final.history, origin, wait_share, drift)


def new_head(work: WorkDir, inputs: SplitInputs, cfg: FinetuneConfig) -> tuple[FcHead, str]:
    """The head to fine-tune (``build_head``), a random fc6's input scaled to the target norm;
    returns it and the line saying where its weights came from."""
    head, origin, fc6_pretrained = build_head(
        inputs.cache, work, inputs.dataset.split, len(inputs.dataset.classes), cfg
    )
    if not fc6_pretrained:  # a random fc6: normalise its input scale
        scale = sample_norm_scale(
            inputs,
            lambda image_id, boxes: host(inputs.cache.pooled(image_id, boxes)),
            RANDOM_FC6_NORM_SAMPLE_WINDOWS,
            cfg.seed,
            cfg.random_fc6_input_norm,
        )
        head.input_scale.fill_(scale)
        origin += f"; fc6 input scaled by {scale:.4g} to mean norm {cfg.random_fc6_input_norm}"
    return head, origin


def _resume(work: WorkDir, head: FcHead, made: dict[str, Any]) -> tuple[TrainState, dict[str, Any]]:
    """Load the interrupted fine-tuning into HEAD; returns its progress and optimizer state.
    One made from other inputs or settings is refused, naming what differs."""
    partial = work.load_model("finetune-partial", "sppdet finetune")
    if partial["fingerprint"] != fingerprint(made):
        what = compare_settings(partial.get("made_from", {}), made, "checkpoint", "asked")
        raise SppdetError(
            f"{work.model('finetune-partial')}: an interrupted fine-tuning with other "
            f"settings ({'; '.join(what) or 'an earlier version of sppdet'}); rerun with the "
            "same settings to resume, or with --force to start over"
        )
    head.load_state_dict(partial["head"])
    state = TrainState(partial["iteration"], partial["round"], list(partial["history"]))
    log.info("resuming fine-tuning at iteration %d", state.iteration)
    return state, partial["optimizer"]


def _window_table(work: WorkDir, inputs: SplitInputs, cfg: FinetuneConfig) -> WindowTable:
    """Every window's fine-tuning label; refused when no window is foreground."""
    table = WindowTable.build(
        inputs.dataset.records, inputs.proposals, len(inputs.dataset.classes), cfg
    )
    if not (table.target > 0).any():
        raise SppdetError(
            f"{work.proposals(inputs.dataset.split)}: no window overlaps a ground-truth box by "
            f"IoU >= {cfg.fg_iou}; check the proposals and the annotations"
        )
    return table


def _train(
    work: WorkDir,
    inputs: SplitInputs,
    head: FcHead,
    table: WindowTable,
    cfg: FinetuneConfig,
    made: dict[str, Any],
    state: TrainState,
    optimizer_state: dict[str, Any] | None,
    runtime: Runtime,
    on_history: Callable[[dict[str, float]], None] | None = None,
) -> tuple[TrainState, float]:
    """The SGD loop from STATE on the runtime's device, checkpointed to
    WORK/models/finetune-partial.pt as it goes; returns the final state and the share of the
    loop's time spent waiting for conv5 maps."""

    def save(train_state: TrainState, optim: dict) -> None:
        work.save_model(
            "finetune-partial",
            {
                "fingerprint": fingerprint(made),
                "made_from": made,
                "head": head.state_dict(),
                "iteration": train_state.iteration,
                "round": train_state.round_index,
                "history": train_state.history,
                "optimizer": optim,
            },
        )

    cache = inputs.cache
    cache.keep_images(cfg.images_per_round)  # a round's maps stay in memory
    reader = RoundMaps(cache, table) if isinstance(cache, FeatureCache) else None
    eta = EtaCheck("finetune", cfg.iterations - state.iteration, "batch", runtime, SHORTER_FINETUNE)
    with progress_bar(cfg.iterations, "finetune", unit="batch") as bar:
        bar.advance(state.iteration)
        clock = FinetuneClock(bar, eta)
        final = train(
            head,
            cache,
            table,
            cfg,
            state,
            optimizer_state,
            save,
            clock=clock,
            device=runtime.device,
            precision=runtime.precision,
            reader=reader,
            on_history=on_history,
        )
    seconds = time.perf_counter() - clock.start
    share = reader.wait_seconds / seconds if reader is not None and seconds > 0 else 0.0
    log.info("finetune: %.1f%% of the time waiting for conv5 maps", 100 * share)
    return final, share


class FinetuneClock:
    """Advances the progress bar; after the first round's pooling and ``ETA_WARMUP_ITEMS``
    batches, estimates the whole run: every batch costs its own time plus its share of its
    round's pooling."""

    def __init__(self, bar: Bar, eta: EtaCheck) -> None:
        self.bar, self.eta = bar, eta
        self.start = time.perf_counter()
        self._pooled: tuple[float, int] | None = None  # seconds to pool round 1, its batches
        self._pooled_at = self.start
        self._batches = 0

    def round_pooled(self, batches: int) -> None:
        if self._pooled is None:
            self._pooled = (time.perf_counter() - self.start, batches)
            self._pooled_at = time.perf_counter()

    def batch_done(self, iteration: int) -> None:
        self.bar.advance()
        self._batches += 1
        if self._pooled is None or self._batches != ETA_WARMUP_ITEMS:
            return
        pool_seconds, round_batches = self._pooled
        per_batch = (time.perf_counter() - self._pooled_at) / self._batches
        per_batch += pool_seconds / max(round_batches, 1)
        self.eta.done = self._batches
        self.eta.estimate(per_batch * self.eta.total)


class RoundMaps:
    """``heads.finetune.RoundReader`` for the conv5 cache: a reader thread decodes the maps of
    the rounds ahead (``READ_AHEAD_ROUNDS``); each round's maps go to the device, once, when
    the round starts. ``wait_seconds``: how long training waited for them."""

    def __init__(self, cache: FeatureCache, table: WindowTable) -> None:
        self.cache, self.table = cache, table
        self.wait_seconds = 0.0

    def __call__(self, rounds: Iterator[Round]) -> Iterator[Round]:
        with Prefetcher(rounds, self._read, READ_AHEAD_ROUNDS, name="round-reader") as reader:
            try:
                for planned, maps in reader:
                    self.cache.hold_maps(maps)
                    yield planned
            finally:
                self.wait_seconds += reader.wait_seconds

    def _read(self, planned: Round) -> dict[MapKey, torch.Tensor]:
        """Host copies of every map the round pools from (on the reader thread)."""
        if not planned.batches:
            return {}
        rows = planned.rows()
        scales = np.concatenate([b.scales for b in planned.batches])
        flips = np.concatenate([b.flipped for b in planned.batches])
        keys = np.unique(np.stack([self.table.image[rows], scales, flips], 1), axis=0)
        maps: dict[MapKey, torch.Tensor] = {}
        for image, scale, flip in keys.tolist():
            wanted = [(int(scale), bool(flip))]
            maps.update(self.cache.read_maps(self.table.image_ids[image], wanted))
        return maps


def _drift(
    inputs: SplitInputs, head: FcHead, table: WindowTable, cfg: FinetuneConfig, runtime: Runtime
) -> PrecisionDrift | None:
    """With mixed precision, how far the trained head's logits move from fp32 on a fixed
    sample of the windows of every image (``DRIFT_WINDOWS``)."""
    if runtime.precision == "fp32":
        return None
    images = np.arange(len(table.image_ids))
    sample = HeldOut.sample(inputs.cache, table, images, DRIFT_WINDOWS, cfg.seed)
    if sample is None:
        return None
    head.eval()
    with torch.no_grad():
        reference = head(sample.features)
        with runtime.autocast():
            mixed = head(sample.features).float()
    drift = PrecisionDrift.measure(reference, mixed)
    log.info("finetune: %s", drift.describe(runtime.precision, "logits"))
    return drift


def load_head(work: WorkDir, inputs: SplitInputs) -> FcHead:
    """The fine-tuned head, checked against the features and classes it is used with."""
    model = work.load_model("finetune", "sppdet finetune")
    if not same_window_features(model["made_from"]["features"], inputs.cache.settings):
        raise SppdetError(
            f"{work.model('finetune')}: fine-tuned on features with other settings; rerun "
            "`sppdet finetune --force`"
        )
    if list(model["classes"]) != list(inputs.dataset.classes):
        raise SppdetError(
            f"{work.model('finetune')}: trained for classes {model['classes']}, not "
            f"{list(inputs.dataset.classes)}; pass the same --classes or rerun `sppdet finetune`"
        )
    head = FcHead(model["in_dim"], model["hidden"], len(model["classes"]) + 1, 0.0)
    head.load_state_dict(model["head"])
    return head.eval()
