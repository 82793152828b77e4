"""Shared helpers of the training and detection tests: a tiny split with its stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FeatureConfig, ProposalConfig, SvmConfig
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.writer import cache_features
from sppdet.detector.training.inputs import SplitInputs, open_split
from sppdet.detector.training.svm import run_train_svm
from sppdet.proposals.stage import run_proposals

CLASSES = ("circle", "square", "triangle")
PROPOSALS = ProposalConfig(max_boxes=80)
FEATURES = FeatureConfig(scales=(96,), dtype="float32", device="cpu")


def make_split(root: Path) -> tuple[Path, WorkDir]:
    """Synthetic VOC data and a work folder whose trainval and test splits have proposals and
    conv5 maps (random zf5), small enough to train on in seconds; 10 training images, so that
    fine-tuning with --holdout 0.1 holds one out and logs its metrics."""
    data = make_synthetic_voc(root / "data", num_images=20, seed=5, image_size=(80, 110))
    work = WorkDir.at(root / "work")
    for split in ("trainval", "test"):
        dataset = load_dataset(data, split, CLASSES)
        run_proposals(dataset, work, PROPOSALS)
        cache_features(dataset, work, FEATURES, progress=False)
    return data, work


def mean_norm(features: list[np.ndarray]) -> float:
    """The mean L2 norm of the rows of FEATURES, in float64."""
    return float(np.linalg.norm(np.concatenate(features).astype(np.float64), axis=1).mean())


def proposal_pool5(inputs: SplitInputs) -> list[np.ndarray]:
    """Pool5 features of every proposal of the split, per image."""
    return [
        inputs.cache.pooled(r.image_id, inputs.proposals(r.image_id)).numpy()
        for r in inputs.dataset.records
    ]


def make_pool5_work(root: Path) -> tuple[Path, WorkDir]:
    """``make_split``'s data and work folder with pool5 SVMs trained on trainval: the smallest
    work folder a detector loads from (no fc layers, no regressors)."""
    data, work = make_split(root)
    inputs = open_split(work, data, "trainval", CLASSES)
    run_train_svm(work, inputs, SvmConfig(layer="pool5", norm_sample_windows=300), False)
    return data, work
