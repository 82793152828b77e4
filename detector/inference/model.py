"""The model: everything ``Detector.predict`` needs, as one dict, from a work folder or one file.

A work folder's trained detector is spread over WORK/models/{finetune,svm,bbox}.pt, the
backbone's weights (a checkpoint file, torchvision's cache or a seed) and the settings
WORK/settings.json recorded. ``model_from_work`` gathers them into one dict of tensors and plain
Python values, checked as the ``detect`` stage checks them (``load_svm``, ``feature_head``,
``load_bbox``: a model trained on other features or another head is refused).
``save_model_file`` writes that dict atomically with ``torch.save`` (``sppdet export``) and
``read_model_file`` loads it with ``weights_only=True`` (no code runs), refusing other files
and newer format versions. ``Detector`` is built from the dict whichever way it came, so a work
folder and its exported file give the same detections.

Layout, format version 1 (tensors on the CPU; lists, not tuples):

    format, format_version, sppdet_version
    classes      the K class names
    trunk        backbone (name), weights (identity), state (conv layers), preprocessing
    features     the FeatureConfig the conv5 cache was made with
    store        the cache's settings: scales, max_size, dtype, precision, channels, geometry, ...
    spp          SppConfig (pyramid, scale rule, window mapping)
    proposals    ProposalConfig (method and settings)
    head         fc6-fc8 (``fc_head_record``), None when the SVMs read pool5
    svm          weights [K, D], bias [K], scale, layer, finetuned, calibration ({a, b} or None)
    bbox         weights [K, D+1, 4], mean, unwhiten, trained, scale; None without regressors
    detect       DetectConfig (pre-NMS threshold, NMS IoU, detections per class)
    config       the work folder's recorded preset (every section, as settings.json has it)
    made_from    what the svm, bbox and finetune models were made from, as they recorded it
    fingerprint  of the models and detect settings (``scorer.detector_fingerprint``)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sppdet.cache.atomic import atomic_output, read_torch
from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import (
    DetectConfig,
    FeatureConfig,
    SppConfig,
    as_dict,
    preset,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.images import feature_configs, proposal_config
from sppdet.detector.detection.scorer import detector_fingerprint
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import MADE_BY as FEATURES_MADE_BY
from sppdet.detector.features.writer import STAGE as FEATURES_STAGE
from sppdet.detector.heads.bbox_reg import BoxRegressor
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.training.bbox import load_bbox
from sppdet.detector.training.inputs import MADE_BY, SplitInputs
from sppdet.detector.training.presets import DEFAULT_PRESET, stage_config
from sppdet.detector.training.svm import feature_head, load_svm

MODEL_FORMAT = "sppdet-model"
MODEL_FORMAT_VERSION = 1  # bump when a reader of the old layout would misread the new one
MODEL_KEYS = (
    "classes", "trunk", "features", "store", "spp", "proposals", "head", "svm", "bbox",
    "detect", "config", "made_from", "fingerprint",
)  # fmt: skip
EXPORT_FIX = "export it again with `sppdet export`"


def model_from_work(work: WorkDir, detect: DetectConfig | None = None) -> dict[str, Any]:
    """WORK's trained detector as a model dict (see the module docstring); DETECT replaces the
    work folder's detect settings."""
    config = work.recorded_preset() or as_dict(preset(DEFAULT_PRESET))
    svm_model = work.load_model("svm", MADE_BY["svm"])
    classes = [str(name) for name in svm_model["classes"]]
    split = trained_split(work, svm_model["made_from"]["features"])
    features, spp = feature_configs(work, split)
    store = dict((work.recorded(FEATURES_STAGE, split) or {}).get("store") or {})
    bbox = work.model("bbox").is_file()
    # The loaders check each model against the cache's settings only: its recorded settings
    # stand in for the store, so a work folder whose conv5 maps were deleted still exports.
    cache = cast(FeatureCache, RecordedCache(store, spp))
    inputs = SplitInputs(Dataset("model", split, tuple(classes), []), _no_proposals, cache, "")
    scorer, svm = load_svm(work, inputs)
    head = feature_head(work, inputs, svm["layer"], svm["finetuned"])
    regressor = load_bbox(work, inputs) if bbox else None
    made_from = {"svm": svm["made_from"], "bbox": None, "finetune": None}
    if bbox:
        made_from["bbox"] = work.load_model("bbox", MADE_BY["bbox"])["made_from"]
    if svm["finetuned"] and head is not None:
        made_from["finetune"] = work.load_model("finetune", MADE_BY["finetune"])["made_from"]
    detect = detect or stage_config(work, None).detect  # the recorded preset's, as `detect`
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "sppdet_version": sppdet_version(),
        "classes": classes,
        "trunk": _trunk_record(features, store),
        "features": as_dict(features),
        "store": store,
        "spp": as_dict(spp),
        "proposals": as_dict(proposal_config(work, split)),
        "head": fc_head_record(head),
        "svm": {
            "weights": torch.from_numpy(scorer.weights),
            "bias": torch.from_numpy(scorer.bias),
            "scale": float(svm["scale"]),
            "layer": str(svm["layer"]),
            "finetuned": bool(svm["finetuned"]),
            "calibration": svm.get("calibration"),
        },
        "bbox": None if regressor is None else _bbox_record(*regressor),
        "detect": as_dict(detect),
        "config": config,
        "made_from": made_from,
        "fingerprint": fingerprint(detector_fingerprint(work, detect, bbox)),
    }


@dataclass(frozen=True)
class RecordedCache:
    """A conv5 cache's settings as ``cache-features`` recorded them: what ``load_svm``,
    ``load_head``, ``load_bbox`` and ``feature_head`` read of a ``FeatureCache``, without its
    store (no maps are read when a model is gathered)."""

    params: dict[str, Any]
    spp: SppConfig
    source = "spp"
    stage = FEATURES_STAGE
    made_by = FEATURES_MADE_BY

    @property
    def settings(self) -> dict[str, Any]:
        return self.params

    @property
    def arch(self) -> str:
        return str(self.params["backbone"])

    @property
    def pyramid(self) -> tuple[int, ...]:
        return check_pyramid(self.spp.pyramid)

    @property
    def dim(self) -> int:
        return pyramid_dim(self.pyramid, int(self.params["channels"]))


def _no_proposals(image_id: str) -> np.ndarray:
    raise AssertionError("a model's inputs hold no images")  # model loading reads no proposals


def trained_split(work: WorkDir, features_fingerprint: str) -> str:
    """The first split whose conv5 cache was recorded with the settings the SVMs were trained
    on (fingerprint FEATURES_FINGERPRINT); else the first cached split, whose settings
    ``load_svm`` then refuses with the fix."""
    splits = work.recorded_splits(FEATURES_STAGE)
    if not splits:
        raise SppdetError(
            f"{work.settings_path}: no `sppdet cache-features` run recorded ; train first"
        )
    matching = [
        split
        for split in splits
        if fingerprint((work.recorded(FEATURES_STAGE, split) or {}).get("store"))
        == features_fingerprint
    ]
    return (matching or splits)[0]


def _trunk_record(features: FeatureConfig, store: dict[str, Any]) -> dict[str, Any]:
    backbone = load_backbone(features.backbone, features.weights)
    if backbone.weights_id != store["weights"]:
        raise SppdetError(
            f"{features.weights}: these weights ({backbone.weights_id}) are not the ones the "
            f"conv5 cache was made with ({store['weights']}) ; put those back, or rebuild the "
            "cache and retrain (`sppdet run --force`)"
        )
    return {
        "backbone": backbone.arch,
        "weights": backbone.weights_id,
        "state": dict(backbone.trunk.features.state_dict()),
        "preprocessing": backbone.preprocessing.to_dict(),
    }


def fc_head_record(head: FcHead | None) -> dict[str, Any] | None:
    """fc6-fc8 as plain values and tensors (None: the SVMs read pool5). Its inverse is
    ``fc_head_from_record``; both are the one place a model file's head is written and read."""
    if head is None:
        return None
    return {
        "in_dim": int(head.fc6.in_features),
        "hidden": int(head.fc6.out_features),
        "outputs": int(head.fc8.out_features),
        "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }


def fc_head_from_record(record: dict[str, Any] | None, where: str) -> FcHead | None:
    """The head ``fc_head_record`` wrote, in eval mode on the CPU."""
    if record is None:
        return None
    head = FcHead(int(record["in_dim"]), int(record["hidden"]), int(record["outputs"]), 0.0)
    try:
        head.load_state_dict(record["state"])
    except RuntimeError as exc:
        raise SppdetError(
            f"{where}: fc6-fc8 do not fit ({_first_line(exc)}) ; {EXPORT_FIX}"
        ) from None
    return head.eval()


def _bbox_record(regressor: BoxRegressor, scale: float) -> dict[str, Any]:
    return {
        "weights": torch.from_numpy(regressor.weights),
        "mean": torch.from_numpy(regressor.target_mean),
        "unwhiten": torch.from_numpy(regressor.unwhiten),
        "trained": torch.from_numpy(regressor.trained),
        "scale": float(scale),
    }


def save_model_file(model: dict[str, Any], path: str | Path) -> Path:
    """Write MODEL to PATH atomically (a killed export leaves no partial file)."""
    path = Path(path)
    if path.is_dir():
        raise SppdetError(f"{path}: a folder ; name the model file to write, e.g. model.sppdet")
    with atomic_output(path) as tmp:
        try:
            torch.save(model, tmp)  # by file name: torch names the archive inside after it
        except RuntimeError as exc:  # torch reports a failed write without its errno
            raise SppdetError(
                f"{path}: could not be written ({_first_line(exc)}) ; check the disk and rerun"
            ) from None
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The model dict in PATH, loaded with ``weights_only=True``; a damaged file, another kind
    of file or a newer format version is a one-line error."""
    model = read_torch(path, EXPORT_FIX)
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise SppdetError(
            f"{path}: not an sppdet model file ; pass a file written by `sppdet export`, or a "
            "work folder"
        )
    found = model.get("format_version")
    if not isinstance(found, int) or found < 1:
        raise SppdetError(f"{path}: model file without a valid format version ; {EXPORT_FIX}")
    if found > MODEL_FORMAT_VERSION:
        raise SppdetError(
            f"{path}: model file format version {found}, written by sppdet "
            f"{model.get('sppdet_version', '?')}; this sppdet ({sppdet_version()}) reads up to "
            f"version {MODEL_FORMAT_VERSION} ; upgrade sppdet (pip install -U sppdet)"
        )
    missing = [key for key in MODEL_KEYS if key not in model]
    if missing:
        raise SppdetError(f"{path}: model file lacks {', '.join(missing)} ; {EXPORT_FIX}")
    return model


def sppdet_version() -> str:
    try:
        return version("sppdet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
