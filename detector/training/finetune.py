"""The ``finetune`` stage: fc6, fc7 and a new fc8 trained on pooled windows of the conv5 cache.

``build_head`` makes the head to fine-tune: fc6/fc7 from the backbone the cache was built with
when it has usable ones, else random (seeded; fc6's input then scaled to a mean norm), and fc8
N(0, 0.01). ``run_finetune`` runs the SGD loop of ``heads.finetune`` over the split's labelled
windows, checkpointing to WORK/models/finetune-partial.pt so an interrupted run resumes, and
saves WORK/models/finetune.pt with the fingerprint of its inputs; ``load_head`` reads it back
for the stages that use the fine-tuned features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.core.config import RANDOM_FC6_NORM_SAMPLE_WINDOWS, FinetuneConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import TrainState, WindowTable, train
from sppdet.detector.training.inputs import (
    SplitInputs,
    UpToDate,
    WindowFeatures,
    feature_settings_fingerprint,
    sample_norm_scale,
    up_to_date,
)

log = logging.getLogger(__name__)


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


def _finetune_fingerprint(inputs: SplitInputs, cfg: FinetuneConfig) -> dict[str, Any]:
    return {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(inputs.cache),
        "classes": list(inputs.dataset.classes),
        "finetune": as_dict(cfg),
    }


@dataclass(frozen=True)
class FinetuneResult:
    """What ``run_finetune`` trained: the model file, its batches and held-out metrics."""

    model: Path
    iterations: int
    history: list[dict[str, float]]  # held-out metrics every ``log_every`` batches
    origin: str  # where fc6/fc7 came from, and fc6's input scale when it is random


def run_finetune(
    work: WorkDir, inputs: SplitInputs, cfg: FinetuneConfig, force: bool = False
) -> FinetuneResult | UpToDate:
    """Fine-tune fc6-fc8; resumes from WORK/models/finetune-partial.pt when its inputs match."""
    inputs.check_images()
    made = _finetune_fingerprint(inputs, cfg)
    key = fingerprint(made)
    if not force and up_to_date(work, "finetune", made):
        return UpToDate(work.model("finetune"))
    head, origin = _new_head(work, inputs, cfg)
    log.info("%s", origin)
    state, optimizer_state = TrainState(0, 0, []), None
    if work.model("finetune-partial").is_file() and not force:
        state, optimizer_state = _resume(work, head, key)
    table = _window_table(work, inputs, cfg)
    final = _train(work, inputs, head, table, cfg, key, state, optimizer_state)
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
    return FinetuneResult(path, final.iteration, final.history, origin)


def _new_head(work: WorkDir, inputs: SplitInputs, cfg: FinetuneConfig) -> tuple[FcHead, str]:
    """The head to fine-tune (``build_head``), a random fc6's input scaled to the target norm;
    returns it and the line saying where its weights came from."""
    head, origin, fc6_pretrained = build_head(
        inputs.cache, work, inputs.dataset.split, len(inputs.dataset.classes), cfg
    )
    if not fc6_pretrained:  # a random fc6: normalise its input scale
        scale = sample_norm_scale(
            inputs,
            lambda image_id, boxes: inputs.cache.pooled(image_id, boxes).numpy(),
            RANDOM_FC6_NORM_SAMPLE_WINDOWS,
            cfg.seed,
            cfg.random_fc6_input_norm,
        )
        head.input_scale.fill_(scale)
        origin += f"; fc6 input scaled by {scale:.4g} to mean norm {cfg.random_fc6_input_norm}"
    return head, origin


def _resume(work: WorkDir, head: FcHead, key: str) -> tuple[TrainState, dict[str, Any]]:
    """Load the interrupted fine-tuning into HEAD; returns its progress and optimizer state."""
    partial = work.load_model("finetune-partial", "sppdet finetune")
    if partial["fingerprint"] != key:
        raise SppdetError(
            f"{work.model('finetune-partial')}: an interrupted fine-tuning with other "
            "settings; rerun with --force to start over"
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
    key: str,
    state: TrainState,
    optimizer_state: dict[str, Any] | None,
) -> TrainState:
    """The SGD loop from STATE, checkpointed to WORK/models/finetune-partial.pt as it goes."""

    def save(train_state: TrainState, optim: dict) -> None:
        work.save_model(
            "finetune-partial",
            {
                "fingerprint": key,
                "head": head.state_dict(),
                "iteration": train_state.iteration,
                "round": train_state.round_index,
                "history": train_state.history,
                "optimizer": optim,
            },
        )

    inputs.cache.keep_images(cfg.images_per_round)  # a round's maps stay in memory
    with progress_bar(cfg.iterations, "finetune", unit="batch") as bar:
        bar.advance(state.iteration)
        return train(
            head,
            inputs.cache,
            table,
            cfg,
            state,
            optimizer_state,
            save,
            on_iteration=lambda *_: bar.advance(),
        )


def load_head(work: WorkDir, inputs: SplitInputs) -> FcHead:
    """The fine-tuned head, checked against the features and classes it is used with."""
    model = work.load_model("finetune", "sppdet finetune")
    if model["made_from"]["features"] != feature_settings_fingerprint(inputs.cache):
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
