"""The training stages: finetune, train-svm and train-bbox, as functions over the work folder.

Each stage reads the dataset records, the proposals store and the conv5 cache of one split, runs
the numerics of its module (finetune, svm, bbox_reg) and saves one model file in WORK/models/ with
the fingerprint of everything it was made from. A later stage refuses a model whose inputs differ
from its own, naming the command that remakes it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.bbox_reg import BoxRegressor, fit_box_regressor
from sppdet.detector.boxes import encode_deltas, nms
from sppdet.detector.config import BboxConfig, FinetuneConfig, SvmConfig, as_dict
from sppdet.detector.data import Dataset, load_dataset, parse_classes
from sppdet.detector.errors import SppdetError
from sppdet.detector.features import FeatureCache
from sppdet.detector.finetune import TrainState, WindowTable, train
from sppdet.detector.heads import LAYERS, FcHead
from sppdet.detector.nets import describe_weights, load_backbone
from sppdet.detector.progress import progress_bar, track
from sppdet.detector.rcnn import RcnnCache
from sppdet.detector.svm import LinearScorer, TrainingImage, feature_scale, train_svms
from sppdet.detector.windows import image_windows
from sppdet.proposals.store import open_proposals

log = logging.getLogger(__name__)

# The command that makes each model file, quoted when a model is missing or unreadable.
MADE_BY = {
    "finetune": "sppdet finetune",
    "svm": "sppdet train-svm",
    "bbox": "sppdet train-bbox",
    "svm-rcnn": "sppdet train-svm --features rcnn",
    "bbox-rcnn": "sppdet train-bbox --features rcnn",
}
FEATURE_KINDS = ("spp", "rcnn")  # pooled from the conv5 cache, or R-CNN's warped windows

WindowFeatures = FeatureCache | RcnnCache  # where a split's window features come from

FEATURE_CHUNK = 1024  # windows per forward pass through fc6/fc7: bounds memory per image


def model_name(base: str, features: str) -> str:
    """The model file of BASE (svm, bbox) trained on FEATURES: svm.pt, or svm-rcnn.pt."""
    return base if features == "spp" else f"{base}-{features}"


def check_features(features: str) -> str:
    if features not in FEATURE_KINDS:
        raise SppdetError(f"--features {features!r}: choose spp or rcnn")
    return features


@dataclass
class SplitInputs:
    """What every training or testing stage reads for one split."""

    dataset: Dataset
    proposals: Callable[[str], np.ndarray]
    cache: WindowFeatures
    inputs_fingerprint: str  # of the proposals and feature stores and the image list

    @property
    def features(self) -> str:
        return self.cache.source

    @property
    def results_name(self) -> str:
        """The folder of WORK/detections/ for these inputs: the split, or e.g. test-rcnn."""
        split = self.dataset.split
        return split if self.features == "spp" else f"{split}-{self.features}"

    def model(self, base: str) -> str:
        """The name of model BASE for these inputs' kind of features."""
        return model_name(base, self.features)

    def check_images(self) -> None:
        cached = set(self.cache.image_ids)
        missing = [r.image_id for r in self.dataset.records if r.image_id not in cached]
        if missing:
            raise SppdetError(
                f"{self.cache.store.root}: {len(missing)} images of split "
                f"{self.dataset.split!r} are not cached (e.g. {missing[0]!r}); run "
                f"`{self.cache.made_by} --split {self.dataset.split}` on the same data"
            )


def open_split(
    work: WorkDir,
    data: str | Path,
    split: str,
    classes: str | Sequence[str] | None = None,
    model_classes_from: str | None = None,
    features: str = "spp",
) -> SplitInputs:
    """Dataset records, proposals and window features (the conv5 cache, or with FEATURES "rcnn"
    the R-CNN store) of SPLIT. Classes: --classes, else those of the model MODEL_CLASSES_FROM
    (test time: a test split may lack a class), else the data's."""
    check_features(features)
    names = parse_classes(classes) if isinstance(classes, str) else classes
    if names is None and model_classes_from is not None:
        name = model_name(model_classes_from, features)
        names = tuple(work.load_model(name, MADE_BY[name])["classes"])
    dataset = load_dataset(data, split, names)
    proposals = open_proposals(work, split)
    cache = FeatureCache.open(work, split) if features == "spp" else RcnnCache.open(work, split)
    ids = [r.image_id for r in dataset.records]
    key = fingerprint(
        {"proposals": proposals.fingerprint, "features": cache.fingerprint, "images": ids}
    )
    return SplitInputs(dataset, proposals.boxes, cache, key)


def feature_settings_fingerprint(cache: WindowFeatures) -> str:
    """Fingerprint of the cache's settings alone (not its images): equal for train and test."""
    return fingerprint(cache.settings)


def up_to_date(work: WorkDir, name: str, made: dict[str, Any]) -> bool:
    """Whether WORK's model NAME exists and was made from exactly MADE (then a stage skips)."""
    if not work.model(name).is_file():
        return False
    return work.load_model(name, MADE_BY[name]).get("fingerprint") == fingerprint(made)


# --------------------------------------------------------------------------------- fine-tuning


def build_head(
    cache: WindowFeatures, work: WorkDir, split: str, num_classes: int, cfg: FinetuneConfig
) -> tuple[FcHead, str, bool]:
    """A new head for the cache's pooled features: fc6/fc7 from the backbone when it has usable
    ones, else random; fc8 N(0, 0.01). Returns the head, a line saying where fc6/fc7 came from,
    and whether fc6 is pretrained.
    """
    recorded = work.settings().get(f"{cache.stage}:{split}", {}).get("settings", {})
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


def run_finetune(
    work: WorkDir, inputs: SplitInputs, cfg: FinetuneConfig, force: bool = False
) -> dict[str, Any]:
    """Fine-tune fc6-fc8; resumes from WORK/models/finetune-partial.pt when its inputs match."""
    inputs.check_images()
    made = _finetune_fingerprint(inputs, cfg)
    key = fingerprint(made)
    if not force and up_to_date(work, "finetune", made):
        return {"skipped": True}
    num_classes = len(inputs.dataset.classes)
    head, origin, fc6_pretrained = build_head(
        inputs.cache, work, inputs.dataset.split, num_classes, cfg
    )
    if not fc6_pretrained:  # a random fc6: normalise its input scale
        scale = _sample_norm_scale(
            inputs,
            lambda image_id, boxes: inputs.cache.pooled(image_id, boxes).numpy(),
            2_000,
            cfg.seed,
            cfg.random_fc6_input_norm,
        )
        head.input_scale.fill_(scale)
        origin += f"; fc6 input scaled by {scale:.4g} to mean norm {cfg.random_fc6_input_norm}"
    log.info("%s", origin)
    state, optimizer_state = TrainState(0, 0, []), None
    if work.model("finetune-partial").is_file() and not force:
        partial = work.load_model("finetune-partial", "sppdet finetune")
        if partial["fingerprint"] != key:
            raise SppdetError(
                f"{work.model('finetune-partial')}: an interrupted fine-tuning with other "
                "settings; rerun with --force to start over"
            )
        head.load_state_dict(partial["head"])
        state = TrainState(partial["iteration"], partial["round"], list(partial["history"]))
        optimizer_state = partial["optimizer"]
        log.info("resuming fine-tuning at iteration %d", state.iteration)
    table = WindowTable.build(inputs.dataset.records, inputs.proposals, num_classes, cfg)
    if not (table.target > 0).any():
        raise SppdetError(
            f"{work.proposals(inputs.dataset.split)}: no window overlaps a ground-truth box by "
            f"IoU >= {cfg.fg_iou}; check the proposals and the annotations"
        )

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
        final = train(
            head,
            inputs.cache,
            table,
            cfg,
            state,
            optimizer_state,
            save,
            on_iteration=lambda *_: bar.advance(),
        )
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
    work.save_model("finetune", payload)
    work.model("finetune-partial").unlink(missing_ok=True)
    return {"iterations": final.iteration, "history": final.history, "origin": origin}


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


# ------------------------------------------------------------------------------ window features


def window_features(
    cache: WindowFeatures, head: FcHead | None, image_id: str, boxes: np.ndarray, layer: str
) -> np.ndarray:
    """LAYER features (pool5, fc6 or fc7 after ReLU) of BOXES at their best scale, float32."""
    if layer not in LAYERS:
        raise SppdetError(f"unknown feature layer {layer!r}: choose one of {', '.join(LAYERS)}")
    chunks = []
    with torch.no_grad():
        for start in range(0, max(len(boxes), 1), FEATURE_CHUNK):
            pooled = cache.pooled(image_id, boxes[start : start + FEATURE_CHUNK])
            chunks.append((pooled if head is None else head.features(pooled, layer)).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, cache.dim), np.float32)


def _sample_norm_scale(
    inputs: SplitInputs,
    feats: Callable[[str, np.ndarray], np.ndarray],
    windows: int,
    seed: int,
    target: float,
) -> float:
    """The mean-norm scale factor, estimated on WINDOWS random windows of random images."""
    rng = np.random.default_rng(seed)
    records = inputs.dataset.records
    order = rng.permutation(len(records))
    per_image = max(1, windows // max(len(records), 1))
    samples, count = [], 0
    for i in order:
        boxes = inputs.proposals(records[i].image_id)
        if len(boxes) == 0:
            continue
        pick = boxes[rng.choice(len(boxes), size=min(per_image, len(boxes)), replace=False)]
        samples.append(feats(records[i].image_id, pick))
        count += len(pick)
        if count >= windows:
            break
    if not samples:
        raise SppdetError("no proposals in the training split; run `sppdet propose` first")
    return feature_scale(np.concatenate(samples), target)


# ------------------------------------------------------------------------------------- SVMs


def dedup_negatives(
    cache: WindowFeatures,
    image_id: str,
    boxes: np.ndarray,
    cfg: SvmConfig,
) -> np.ndarray:
    """Indices of BOXES kept as distinct negatives: one per (best scale, conv5 cells) in the
    released code (one per distinct box for R-CNN features), or greedy IoU > 0.7 suppression in
    proposal order (the paper)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if cfg.neg_dedup == "cells":
        _, first = np.unique(cache.feature_keys(image_id, boxes), axis=0, return_index=True)
        return np.sort(first)
    order_scores = -np.arange(len(boxes), dtype=np.float64)  # earlier proposals win
    return np.sort(nms(boxes, order_scores, cfg.neg_dedup_iou))


def run_train_svm(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: SvmConfig,
    finetuned: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """One linear SVM per class on LAYER features with hard-negative mining (svm.py)."""
    inputs.check_images()
    head = feature_head(work, inputs, cfg.layer, finetuned)
    cache, classes = inputs.cache, inputs.dataset.classes
    made = {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(cache),
        "head": _head_fingerprint(work, finetuned, cfg.layer),
        "classes": list(classes),
        "svm": as_dict(cfg),
    }
    name = inputs.model("svm")
    if not force and up_to_date(work, name, made):
        return {"skipped": True, "model": str(work.model(name))}

    def feats(image_id: str, boxes: np.ndarray) -> np.ndarray:
        return window_features(cache, head, image_id, boxes, cfg.layer)

    scale = _sample_norm_scale(inputs, feats, cfg.norm_sample_windows, cfg.seed, cfg.feature_norm)
    records = inputs.dataset.records
    positives: list[list[np.ndarray]] = [[] for _ in classes]
    for record in track(records, len(records), "svm: positives"):
        if len(record.boxes):
            gt_feats = feats(record.image_id, record.boxes) * scale
            for k in np.unique(record.labels):
                positives[k].append(gt_feats[record.labels == k])
    stacked = [np.concatenate(p) if p else np.zeros((0, cache.dim)) for p in positives]

    def images() -> Iterator[TrainingImage]:
        for record in records:
            boxes = inputs.proposals(record.image_id)
            keep = dedup_negatives(cache, record.image_id, boxes, cfg)
            windows = image_windows(record, boxes[keep], len(classes))
            proposals_only = ~windows.is_gt
            negatives = (windows.class_iou < cfg.neg_iou).T & proposals_only[None]
            rows = np.nonzero(negatives.any(axis=0))[0]
            x = feats(record.image_id, windows.boxes[rows]) * scale
            yield TrainingImage(features=x.astype(np.float32), negatives=negatives[:, rows])

    with progress_bar(len(records), "svm: hard negatives") as bar:

        def on_image(sizes: list[int]) -> None:
            bar.advance()
            bar.note(f"svm: hard negatives (cached {', '.join(map(str, sizes))})")

        scorer, stats = train_svms(stacked, images(), cfg, on_image, class_names=classes)
    path = work.save_model(
        name,
        {
            "fingerprint": fingerprint(made),
            "made_from": made,
            "weights": torch.from_numpy(scorer.weights),
            "bias": torch.from_numpy(scorer.bias),
            "scale": scale,
            "layer": cfg.layer,
            "finetuned": finetuned,
            "classes": list(classes),
            "stats": stats,
        },
    )
    return {"scale": scale, "stats": dict(zip(classes, stats, strict=True)), "model": str(path)}


def feature_head(work: WorkDir, inputs: SplitInputs, layer: str, finetuned: bool) -> FcHead | None:
    if layer == "pool5":
        return None
    if finetuned and inputs.features != "spp":
        raise SppdetError(
            f"--features {inputs.features} --layer {layer}: fine-tuning runs on SPP features "
            "only; pass --no-finetuned (the backbone's fc6/fc7) or --layer pool5"
        )
    if finetuned:
        return load_head(work, inputs)
    cfg = dataclasses.replace(FinetuneConfig(), dropout=0.0)
    head, origin, _ = build_head(
        inputs.cache, work, inputs.dataset.split, len(inputs.dataset.classes), cfg
    )
    log.info("features from the pre-trained head: %s", origin)
    return head.eval()


def _head_fingerprint(work: WorkDir, finetuned: bool, layer: str) -> str:
    if layer == "pool5":
        return "pool5"
    if not finetuned:
        return "pretrained"
    return str(work.load_model("finetune", "sppdet finetune")["fingerprint"])


def load_svm(work: WorkDir, inputs: SplitInputs) -> tuple[LinearScorer, dict[str, Any]]:
    name = inputs.model("svm")
    model = work.load_model(name, MADE_BY[name])
    if model["made_from"]["features"] != feature_settings_fingerprint(inputs.cache):
        raise SppdetError(
            f"{work.model(name)}: trained on features with other settings; rerun `{MADE_BY[name]}`"
        )
    if model["made_from"]["head"] != _head_fingerprint(work, model["finetuned"], model["layer"]):
        raise SppdetError(
            f"{work.model(name)}: trained on another fine-tuned head; rerun `{MADE_BY[name]}`"
        )
    return LinearScorer(model["weights"].numpy(), model["bias"].numpy()), model


# --------------------------------------------------------------------------- box regression


def run_train_bbox(
    work: WorkDir, inputs: SplitInputs, cfg: BboxConfig, force: bool = False
) -> dict[str, Any]:
    """Per-class ridge regressors on pool5 features of windows with IoU > 0.5 (bbox_reg.py)."""
    inputs.check_images()
    cache, classes = inputs.cache, inputs.dataset.classes
    made = {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(cache),
        "classes": list(classes),
        "bbox": as_dict(cfg),
    }
    name = inputs.model("bbox")
    if not force and up_to_date(work, name, made):
        return {"skipped": True, "model": str(work.model(name))}
    rng = np.random.default_rng(cfg.seed)
    features, targets, labels = [], [], []
    for record in track(inputs.dataset.records, len(inputs.dataset), "bbox: samples"):
        if len(record.boxes) == 0:
            continue
        windows = image_windows(record, inputs.proposals(record.image_id), len(classes))
        rows = np.nonzero(windows.max_iou > cfg.min_iou)[0]
        if len(rows) > cfg.max_samples_per_image:
            rows = np.sort(rng.choice(rows, cfg.max_samples_per_image, replace=False))
        boxes = windows.boxes[rows]
        gt = record.boxes[windows.gt_index[rows]]
        pooled = window_features(cache, None, record.image_id, boxes, "pool5")
        features.append(pooled.astype(np.float16))  # halves the memory of the sample matrix
        targets.append(encode_deltas(boxes, gt))
        labels.append(record.labels[windows.gt_index[rows]])
    if not features:
        raise SppdetError("no ground-truth boxes in the training split: nothing to regress")
    x = np.concatenate(features)
    sample = x[rng.choice(len(x), min(len(x), 10_000), replace=False)].astype(np.float32)
    scale = feature_scale(sample, cfg.feature_norm)
    y, lab = np.concatenate(targets), np.concatenate(labels)
    with progress_bar(1, "bbox: ridge fits", unit="fit") as bar:
        model = fit_box_regressor(
            x.astype(np.float32) * scale, y, lab, len(classes), cfg.ridge_lambda
        )
        bar.advance()
    path = work.save_model(
        name,
        {
            "fingerprint": fingerprint(made),
            "made_from": made,
            "scale": scale,
            "weights": torch.from_numpy(model.weights),
            "mean": torch.from_numpy(model.target_mean),
            "unwhiten": torch.from_numpy(model.unwhiten),
            "trained": torch.from_numpy(model.trained),
            "classes": list(classes),
        },
    )
    counts = np.bincount(lab, minlength=len(classes)).tolist()
    return {"scale": scale, "samples": dict(zip(classes, counts, strict=True)), "model": str(path)}


def load_bbox(work: WorkDir, inputs: SplitInputs) -> tuple[BoxRegressor, float]:
    name = inputs.model("bbox")
    model = work.load_model(name, MADE_BY[name])
    if model["made_from"]["features"] != feature_settings_fingerprint(inputs.cache):
        raise SppdetError(
            f"{work.model(name)}: trained on features with other settings; rerun `{MADE_BY[name]}`"
        )
    regressor = BoxRegressor(
        model["weights"].numpy(),
        model["mean"].numpy(),
        model["unwhiten"].numpy(),
        model["trained"].numpy(),
    )
    return regressor, float(model["scale"])
