"""What the training and test stages read for one split, and how they decide to skip.

``open_split`` gathers a split's dataset records, its proposals store and its window features
(the conv5 cache, or the R-CNN store) as ``SplitInputs``, with one fingerprint of all three.
Every stage saves its model in WORK/models/ with the fingerprint of everything it was made from;
``up_to_date`` compares it so a stage with unchanged inputs and settings skips (``UpToDate``), and
``MADE_BY`` names the command that remakes a missing or mismatched model, and ``differences``
names the settings that differ between two recorded settings, with both values.
``window_features`` (computed on the runtime's device) and ``sample_norm_scale`` are the
feature reads the stages share; ``host`` brings a result back from the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset, parse_classes
from sppdet.detector.data.records import Dataset
from sppdet.detector.features.rcnn_reader import RcnnCache
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.heads.fc import LAYERS, FcHead
from sppdet.detector.heads.svm import feature_scale
from sppdet.detector.training.runtime import Runtime
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


@dataclass(frozen=True)
class UpToDate:
    """A training stage's result when its model was already made from the same inputs and
    settings: nothing was trained."""

    model: Path


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

    def to(self, device: torch.device | str) -> SplitInputs:
        """Pool on DEVICE (the conv5 cache; stored R-CNN features are read on the host and
        moved by the stages); returns self."""
        if isinstance(self.cache, FeatureCache):
            self.cache.to(device)
        return self

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
    device: torch.device | str = "cpu",
) -> SplitInputs:
    """Dataset records, proposals and window features (the conv5 cache, or with FEATURES "rcnn"
    the R-CNN store) of SPLIT. Classes: --classes, else those of the model MODEL_CLASSES_FROM
    (test time: a test split may lack a class), else the data's. The conv5 cache holds its maps
    and pools on DEVICE."""
    check_features(features)
    names = parse_classes(classes) if isinstance(classes, str) else classes
    if names is None and model_classes_from is not None:
        name = model_name(model_classes_from, features)
        names = tuple(work.load_model(name, MADE_BY[name])["classes"])
    dataset = load_dataset(data, split, names)
    proposals = open_proposals(work, split)
    cache = (
        FeatureCache.open(work, split, device=device)
        if features == "spp"
        else RcnnCache.open(work, split)
    )
    ids = [r.image_id for r in dataset.records]
    key = inputs_fingerprint(proposals.fingerprint, cache.fingerprint, ids)
    return SplitInputs(dataset, proposals.boxes, cache, key)


def inputs_fingerprint(proposals: str, features: str, image_ids: Sequence[str]) -> str:
    """What a stage trained on a split's inputs records: the proposal and feature stores'
    fingerprints and the images, in order (``SplitInputs.inputs_fingerprint``)."""
    return fingerprint({"proposals": proposals, "features": features, "images": list(image_ids)})


def feature_settings_fingerprint(cache: WindowFeatures) -> str:
    """Fingerprint of the cache's settings alone (not its images): what a model trained on it
    records."""
    return fingerprint(cache.settings)


def same_window_features(recorded: str, settings: dict[str, Any]) -> bool:
    """Whether a model trained on a store whose ``feature_settings_fingerprint`` was RECORDED
    fits a store with these SETTINGS: the same settings, ``flip`` aside. The mirrored maps, which
    fine-tuning alone reads, change no window's features, so a split that is only detected on is
    cached without them."""
    if "flip" not in settings:
        return recorded == fingerprint(settings)
    return recorded in {fingerprint({**settings, "flip": flip}) for flip in (False, True)}


def up_to_date(work: WorkDir, name: str, made: dict[str, Any]) -> bool:
    """Whether WORK's model NAME exists and was made from exactly MADE (then a stage skips)."""
    if not work.model(name).is_file():
        return False
    return work.load_model(name, MADE_BY[name]).get("fingerprint") == fingerprint(made)


def window_features(
    cache: WindowFeatures,
    head: FcHead | None,
    image_id: str,
    boxes: np.ndarray,
    layer: str,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """LAYER features (pool5, fc6 or fc7 after ReLU) of BOXES at their best scale: float32, on
    the runtime's device, pooled and run through the head there FEATURE_CHUNK windows at a time
    (the fc layers in the runtime's precision)."""
    if layer not in LAYERS:
        raise SppdetError(f"unknown feature layer {layer!r}: choose one of {', '.join(LAYERS)}")
    runtime = runtime or Runtime()
    chunks = []
    with torch.no_grad():
        for start in range(0, max(len(boxes), 1), FEATURE_CHUNK):
            pooled = cache.pooled(image_id, boxes[start : start + FEATURE_CHUNK])
            pooled = pooled.to(runtime.device)  # R-CNN features are read on the host
            if head is None:
                chunks.append(pooled)
                continue
            with runtime.autocast():
                chunks.append(head.features(pooled, layer).float())
    if not chunks:
        return torch.zeros((0, cache.dim), device=runtime.device)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def host(features: torch.Tensor) -> np.ndarray:
    """FEATURES as a float32 numpy array on the host (one transfer)."""
    return features.detach().to("cpu", torch.float32).numpy()


def sample_norm_scale(
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
