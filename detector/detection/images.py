"""What detection on arbitrary images needs from a work folder, besides its models.

``sppdet detect --image`` runs through the Python API (``sppdet.detector.Detector``), which
computes each image's proposals and conv5 maps in memory with the settings ``propose`` and
``cache-features`` recorded in WORK/settings.json when the models were trained. This module
rebuilds those settings (``proposal_config``, ``feature_configs``; ``section_from_dict`` refuses
settings this version does not know) and says how one detection is printed (``ImageDetection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    FeatureConfig,
    ProposalConfig,
    SppConfig,
    section_from_dict,
)
from sppdet.detector.core.errors import SppdetError

# What ``propose`` records next to its ProposalConfig settings (proposals.methods.method_params):
# versions and the edge source that make the store's fingerprint, not settings to run with.
PROPOSAL_STORE_KEYS = ("edges", "opencv", "algorithm_version")
BUILT_IN_EDGES = "built-in"  # the "edges" entry of proposals made with the built-in edge detector


@dataclass(frozen=True)
class ImageDetection:
    """One detection of an image, as ``detect --image`` prints it."""

    class_name: str
    score: float
    box: list[float]  # x1 y1 x2 y2, inclusive 0-based pixels
    margin: float | None = None  # the SVM margin, when the score is a probability made from it

    def to_json(self) -> dict[str, Any]:
        found = {"class": self.class_name, "score": self.score, "box": self.box}
        return found if self.margin is None else {**found, "margin": self.margin}


def _recorded(work: WorkDir, stage: str, split: str | None) -> tuple[dict[str, Any], str]:
    """The settings of WORK's STAGE run on SPLIT (default: the first recorded, the split the
    models were trained on), and where they come from, for messages."""
    splits = work.recorded_splits(stage)
    if not splits or (split is not None and split not in splits):
        on = "" if split is None else f" on {split}"
        raise SppdetError(
            f"{work.settings_path}: no `sppdet {stage}` run recorded{on}; train first"
        )
    split = split or splits[0]
    return work.recorded(stage, split) or {}, f"{work.settings_path} ({stage} on {split})"


def _fix(stage: str) -> str:
    return f"rerun `sppdet {stage}` and the training stages with this version of sppdet"


def proposal_config(work: WorkDir, split: str | None = None) -> ProposalConfig:
    """The ProposalConfig of the proposals of WORK's SPLIT (default: the first recorded)."""
    recorded, where = _recorded(work, "propose", split)
    edges = recorded.get("edges", BUILT_IN_EDGES)
    if edges != BUILT_IN_EDGES:
        raise SppdetError(
            f"{where}: the models were trained on EdgeBoxes with a structured edge model "
            f"({edges}), which detection on image files cannot use; detect on a dataset split"
        )
    settings = {k: v for k, v in recorded.items() if k not in PROPOSAL_STORE_KEYS}
    return section_from_dict(ProposalConfig, settings, where, _fix("propose"))


def feature_configs(work: WorkDir, split: str | None = None) -> tuple[FeatureConfig, SppConfig]:
    """The FeatureConfig and SppConfig of WORK's conv5 cache of SPLIT (default: the first
    recorded)."""
    recorded, where = _recorded(work, "cache-features", split)
    fix = _fix("cache-features")
    return (
        section_from_dict(FeatureConfig, recorded["features"], where, fix),
        section_from_dict(SppConfig, recorded["spp"], where, fix),
    )
