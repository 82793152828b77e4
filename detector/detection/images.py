"""``sppdet detect --image``: detection on arbitrary image files with a work folder's models.

The files become a one-split dataset ("images") in WORK/detections/images, a scratch work folder:
their proposals and conv5 maps are computed there with the settings ``propose`` and
``cache-features`` recorded in WORK/settings.json when the models were trained (rebuilt with
``section_from_dict``, which refuses settings this version does not know), then every proposal
is scored and NMS'd as in the ``detect`` stage, the conv layers, pooling and scoring on the
runtime's device. Nothing is written to the work folder itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    DetectConfig,
    FeatureConfig,
    ProposalConfig,
    SppConfig,
    section_from_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.draw import draw_detections
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.detection.postprocess import Candidates, select
from sppdet.detector.detection.scorer import image_candidates, load_window_scorer
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.training.inputs import SplitInputs
from sppdet.detector.training.runtime import Runtime
from sppdet.proposals.stage import raise_for_bad, run_proposals
from sppdet.proposals.store import open_proposals

# What ``propose`` records next to its ProposalConfig settings (proposals.methods.method_params):
# versions and the edge source that make the store's fingerprint, not settings to run with.
PROPOSAL_STORE_KEYS = ("edges", "opencv", "algorithm_version")
BUILT_IN_EDGES = "built-in"  # the "edges" entry of proposals made with the built-in edge detector


@dataclass(frozen=True)
class ImageDetection:
    """One detection of an image file."""

    class_name: str
    score: float
    box: list[float]  # x1 y1 x2 y2, inclusive pixels

    def to_json(self) -> dict[str, Any]:
        return {"class": self.class_name, "score": self.score, "box": self.box}


def _recorded(work: WorkDir, stage: str) -> tuple[dict[str, Any], str]:
    """The settings of WORK's first recorded STAGE run (on the split the models were trained
    on), and where they come from, for messages."""
    splits = work.recorded_splits(stage)
    if not splits:
        raise SppdetError(f"{work.settings_path}: no `sppdet {stage}` run recorded; train first")
    return work.recorded(stage, splits[0]) or {}, f"{work.settings_path} ({stage} on {splits[0]})"


def _fix(stage: str) -> str:
    return f"rerun `sppdet {stage}` and the training stages with this version of sppdet"


def proposal_config(work: WorkDir) -> ProposalConfig:
    """The ProposalConfig of the proposals WORK's models were trained on."""
    recorded, where = _recorded(work, "propose")
    edges = recorded.get("edges", BUILT_IN_EDGES)
    if edges != BUILT_IN_EDGES:
        raise SppdetError(
            f"{where}: the models were trained on EdgeBoxes with a structured edge model "
            f"({edges}), which --image cannot use; detect on a dataset split instead"
        )
    settings = {k: v for k, v in recorded.items() if k not in PROPOSAL_STORE_KEYS}
    return section_from_dict(ProposalConfig, settings, where, _fix("propose"))


def feature_configs(work: WorkDir) -> tuple[FeatureConfig, SppConfig]:
    """The FeatureConfig and SppConfig of the conv5 cache WORK's models were trained on."""
    recorded, where = _recorded(work, "cache-features")
    fix = _fix("cache-features")
    return (
        section_from_dict(FeatureConfig, recorded["features"], where, fix),
        section_from_dict(SppConfig, recorded["spp"], where, fix),
    )


def detect_images(
    work: WorkDir,
    paths: list[Path],
    draw: Path | None,
    cfg: DetectConfig,
    top: int,
    runtime: Runtime | None = None,
) -> dict[str, list[ImageDetection]]:
    """Detect on arbitrary image files with WORK's models, best first per file; with DRAW, a
    picture of each file's TOP detections goes there. Proposals and conv5 maps are computed on
    the fly with the settings the models were trained with, in WORK/detections/images; the
    trunk, pooling and scoring run on the runtime's device."""
    runtime = runtime or Runtime()
    classes = tuple(work.load_model("svm", "sppdet train-svm")["classes"])
    dataset = _image_dataset(paths, classes)
    scratch = WorkDir.at(work.detections(dataset.split))
    features, spp = feature_configs(work)
    features = dataclasses.replace(features, device=str(runtime.device))
    raise_for_bad(run_proposals(dataset, scratch, proposal_config(work), force=True))
    cache_features(dataset, scratch, features, spp, force=True)
    proposals = open_proposals(scratch, dataset.split)
    cache = FeatureCache.open(scratch, dataset.split, device=runtime.device)
    inputs = SplitInputs(dataset, proposals.boxes, cache, "")
    detector = load_window_scorer(
        work, inputs, cfg, bbox=work.model("bbox").is_file(), runtime=runtime
    )
    found: dict[str, list[ImageDetection]] = {}
    for record in dataset.records:
        kept = select(image_candidates(inputs, detector, record.image_id), cfg, runtime.device)
        order = np.argsort(-kept.scores, kind="stable")
        found[str(record.path)] = [
            ImageDetection(
                classes[int(kept.labels[i])],
                float(kept.scores[i]),
                [float(v) for v in kept.boxes[i]],
            )
            for i in order
        ]
        if draw is not None:
            _draw(record, kept.take(order[:top]), classes, draw)
    inputs.cache.close()
    proposals.close()
    return found


def _image_dataset(paths: list[Path], classes: tuple[str, ...]) -> Dataset:
    """The files as the records of a dataset split "images", each file's stem its id."""
    records = []
    for path in paths:
        height, width = read_image(path).shape[:2]
        records.append(ImageRecord(image_id=path.stem, path=path, width=width, height=height))
    if len({r.image_id for r in records}) != len(records):
        raise SppdetError("--image files must have distinct names (their stems are the ids)")
    return Dataset(name="images", split="images", classes=classes, records=records)


def _draw(record: ImageRecord, best: Candidates, classes: tuple[str, ...], folder: Path) -> None:
    rgb = read_image(record.path)
    picture = draw_detections(rgb, best.boxes, best.labels, best.scores, classes)
    picture.save(folder / f"{record.image_id}.png")
