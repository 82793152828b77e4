"""Tests of ``sppdet.detector.features.rcnn_reader``: ``RcnnCache`` returns the stored pool5 rows
of exactly the windows asked for, in any order, through the ``FeatureCache`` interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import FeatureConfig, RcnnConfig, SppConfig, SvmConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.rcnn_reader import RcnnCache
from sppdet.detector.features.rcnn_writer import cache_rcnn_features
from sppdet.detector.training.svm import dedup_negatives
from sppdet.proposals.store import open_proposals

load_commands()


def test_pooled_returns_the_stored_rows_of_the_windows_asked_for(rcnn_work) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    dataset = load_dataset(data, "trainval")
    config = RcnnConfig(warp_size=64, context_padding=8)
    cache_rcnn_features(dataset, work, FeatureConfig(), SppConfig(), config, progress=False)
    record = dataset.records[0]
    with open_proposals(work, "trainval") as store:
        proposals = store.boxes(record.image_id)
    cache = RcnnCache.open(work, "trainval")
    stored = cache.store.get(record.image_id, "boxes")
    pool5 = cache.store.get(record.image_id, "pool5").astype(np.float32)
    wanted = np.concatenate([record.boxes, proposals])[::-1]  # any order, duplicates allowed
    # Independently: the stored row of each wanted box, found by comparing whole boxes.
    rows = [int(np.flatnonzero((stored == box).all(1))[0]) for box in wanted.astype(np.float32)]
    got = cache.pooled(record.image_id, wanted)
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), pool5[rows])
    assert cache.dim == 256 * 50 and cache.pyramid == (1, 2, 3, 6)
    size = cache.image_info(record.image_id)
    assert (size.height, size.width) == (record.height, record.width)
    assert "proposals" not in cache.settings and cache.settings["warp_size"] == 64
    with pytest.raises(SppdetError, match="no R-CNN features"):
        cache.pooled(record.image_id, np.array([[1, 2, 3, 4]]))
    # For R-CNN, only identical boxes share features: dedup keeps each distinct box once.
    doubled = np.concatenate([proposals, proposals])
    keep = dedup_negatives(cache, record.image_id, doubled, SvmConfig(neg_dedup="cells"))
    assert len(keep) == len(np.unique(proposals, axis=0))
    cache.close()


def test_a_missing_rcnn_store_names_the_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_synthetic_voc(tmp_path / "data", num_images=4, seed=1, image_size=(80, 100))
    work = tmp_path / "work"
    assert run_app(["propose", "--data", str(data), "--work", str(work), "--max-boxes", "5"]) == 0
    code = run_app(["train-svm", "--data", str(data), "--work", str(work), "--features", "rcnn"])
    assert code == 2
    assert "sppdet cache-features --features rcnn --split trainval" in capsys.readouterr().err
