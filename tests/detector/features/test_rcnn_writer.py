"""Tests of ``sppdet.detector.features.rcnn_writer``: the R-CNN pool5 store holds every window an
image needs, computed the R-CNN way, and resumes or refuses like the other stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import FeatureConfig, RcnnConfig, SppConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.features.rcnn_warp import RcnnFeaturizer
from sppdet.detector.features.rcnn_writer import KIND, MADE_BY, cache_rcnn_features
from sppdet.proposals.store import open_proposals

SMALL = RcnnConfig(warp_size=64, context_padding=8)


def test_store_holds_every_proposal_and_ground_truth_box(rcnn_work) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    dataset = load_dataset(data, "trainval")
    stats = cache_rcnn_features(dataset, work, FeatureConfig(), SppConfig(), SMALL, progress=False)
    assert (stats.images, stats.computed) == (len(dataset.records), len(dataset.records))
    proposals = open_proposals(work, "trainval")
    store = ShardedStore.open(work.rcnn_features("trainval"), KIND, MADE_BY)
    featurizer = RcnnFeaturizer(load_backbone("zf5"), (1, 2, 3, 6), SMALL, torch.device("cpu"))
    windows = 0
    for record in dataset.records:
        boxes = store.get(record.image_id, "boxes")
        given = np.concatenate([record.boxes, proposals.boxes(record.image_id)])
        assert {tuple(b) for b in boxes.tolist()} == {tuple(b) for b in given.tolist()}
        assert len(boxes) == len({tuple(b) for b in boxes.tolist()})  # each window once
        image = read_image(record.path)
        attrs = store.image_attrs(record.image_id)
        assert (attrs["height"], attrs["width"]) == image.shape[:2]
        pool5 = store.get(record.image_id, "pool5")
        fresh = featurizer.pool5(featurizer.prepare(image), boxes).to(torch.float16).numpy()
        assert pool5.dtype == np.float16 and np.array_equal(pool5, fresh)
        windows += len(boxes)
    assert stats.windows == windows
    store.close()
    proposals.close()
    assert work.recorded("cache-features-rcnn", "trainval")["store"]["warp_size"] == 64
    # Rerun: resumes (nothing to do); other settings: refused, naming --force.
    again = cache_rcnn_features(dataset, work, FeatureConfig(), SppConfig(), SMALL, progress=False)
    assert again.computed == 0
    with pytest.raises(SppdetError, match="--force"):
        cache_rcnn_features(
            dataset, work, FeatureConfig(), SppConfig(), RcnnConfig(warp_size=64, context_padding=4)
        )


def test_settings_the_featurizer_would_refuse_are_refused_first(rcnn_work) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    dataset = load_dataset(data, "trainval")
    for config, option in (
        (RcnnConfig(warp_size=64, context_padding=32), "--context-padding 32"),
        (RcnnConfig(dtype="float8"), "--dtype 'float8'"),
    ):
        with pytest.raises(SppdetError, match=option):
            cache_rcnn_features(dataset, work, FeatureConfig(), SppConfig(), config)
    assert not work.rcnn_features("trainval").exists()
