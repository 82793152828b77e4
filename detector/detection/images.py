"""Images: split out of the former ``detect`` module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    DetectConfig,
    FeatureConfig,
    ProposalConfig,
    SppConfig,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.draw import draw_detections
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.detection.postprocess import select
from sppdet.detector.detection.scorer import load_detector
from sppdet.detector.detection.stage import _image_candidates
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.training.inputs import (
    SplitInputs,
)
from sppdet.proposals.stage import raise_for_bad, run_proposals
from sppdet.proposals.store import open_proposals


def _recorded(work: WorkDir, stage: str) -> dict[str, Any]:
    """The settings the first STAGE:<split> entry of WORK's settings.json recorded."""
    for key, entry in work.settings().items():
        if key.split(":")[0] == stage:
            return entry["settings"]
    raise SppdetError(f"{work.settings_path}: no `sppdet {stage}` run recorded; train first")


def _section(cls: type, values: dict[str, Any]) -> Any:
    known = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in values.items()
        if k in cls.__dataclass_fields__
    }
    return cls(**known)


def detect_images(
    work: WorkDir, paths: list[Path], draw: Path | None, cfg: DetectConfig, top: int
) -> dict[str, Any]:
    """Detect on arbitrary image files with WORK's models: proposals and conv5 maps are computed
    on the fly with the settings the models were trained with, in WORK/detections/images."""
    classes = tuple(work.load_model("svm", "sppdet train-svm")["classes"])
    records = []
    for path in paths:
        height, width = read_image(path).shape[:2]
        records.append(ImageRecord(image_id=path.stem, path=path, width=width, height=height))
    if len({r.image_id for r in records}) != len(records):
        raise SppdetError("--image files must have distinct names (their stems are the ids)")
    dataset = Dataset(name="images", split="images", classes=classes, records=records)
    scratch = WorkDir.at(work.detections("images"))
    features = _recorded(work, "cache-features")
    summary = run_proposals(
        dataset, scratch, _section(ProposalConfig, _recorded(work, "propose")), force=True
    )
    raise_for_bad(summary)
    cache_features(
        dataset,
        scratch,
        _section(FeatureConfig, features["features"]),
        _section(SppConfig, features["spp"]),
        force=True,
    )
    proposals = open_proposals(scratch, "images")
    inputs = SplitInputs(dataset, proposals.boxes, FeatureCache.open(scratch, "images"), "")
    detector = load_detector(work, inputs, cfg, bbox=work.model("bbox").is_file())
    found: dict[str, Any] = {}
    for record in records:
        kept = select(_image_candidates(inputs, detector, record.image_id), cfg)
        order = np.argsort(-kept.scores, kind="stable")
        found[str(record.path)] = [
            {
                "class": classes[int(kept.labels[i])],
                "score": float(kept.scores[i]),
                "box": [float(v) for v in kept.boxes[i]],
            }
            for i in order
        ]
        if draw is not None:
            best = order[:top]
            picture = draw_detections(
                read_image(record.path),
                kept.boxes[best],
                kept.labels[best],
                kept.scores[best],
                classes,
            )
            picture.save(draw / f"{record.image_id}.png")
    inputs.cache.close()
    proposals.close()
    return found
