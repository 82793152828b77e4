"""Flipped windows end to end: the cache's mirrored maps, the reader's mirrored boxes and
fine-tuning's flipped batches give the features of the same object in the mirrored image.

The independent computation is a second image that *is* the mirror of the first, cached without
any flip: the flipped window of image A must pool exactly what the mirrored box pools on image B.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FeatureConfig, FinetuneConfig
from sppdet.detector.data.voc import load_voc
from sppdet.detector.features.conv5 import resize_to_scales
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features, detection_config, feature_params
from sppdet.detector.heads.finetune import WindowTable, pool_batch
from sppdet.detector.training.inputs import same_window_features
from tests.detector.features.shared import make_tiny_voc

HEIGHT, WIDTH = 64, 96
# 64: the image as it is; 32: an exact 2x2 INTER_AREA average. Both commute with mirroring
# exactly (checked below), so the two routes see bit-identical trunk inputs.
SCALES = (64, 32)
CONFIG = FeatureConfig(
    scales=SCALES, max_size=None, dtype="float32", flip=True, shard_size=2, device="cpu"
)


def mirrored(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes (0-based inclusive pixels) of the mirrored image: x -> width - 1 - x."""
    return np.stack([width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0], boxes[:, 3]], 1)


def test_mirrored_box_by_hand() -> None:
    got = mirrored(np.array([[10.0, 5.0, 40.0, 30.0]]), WIDTH)
    np.testing.assert_array_equal(got, [[55.0, 5.0, 85.0, 30.0]])


def _mirror_pair(root: Path) -> Path:
    """A VOC tree of two images, im00 and im01 = im00 mirrored (lossless PNG)."""
    voc = make_tiny_voc(root, sizes=[(HEIGHT, WIDTH)] * 2)
    image = cv2.imread(str(voc / "JPEGImages" / "im00.png"))
    cv2.imwrite(str(voc / "JPEGImages" / "im01.png"), np.ascontiguousarray(image[:, ::-1]))
    return voc


def _random_boxes(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = np.sort(rng.integers(0, WIDTH, (n, 2)), 1)
    y = np.sort(rng.integers(0, HEIGHT, (n, 2)), 1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1).astype(np.float64)


def test_flipped_windows_pool_the_mirrored_image(tmp_path: Path) -> None:
    voc = _mirror_pair(tmp_path / "voc")
    image = cv2.imread(str(voc / "JPEGImages" / "im00.png"))
    for plain, flip in zip(
        resize_to_scales(image, SCALES, None),
        resize_to_scales(np.ascontiguousarray(image[:, ::-1]), SCALES, None),
        strict=True,
    ):  # the premise: resizing and mirroring commute at these scales
        np.testing.assert_array_equal(plain[:, ::-1], flip)
    dataset = load_voc(voc, "trainval")
    work = WorkDir.at(tmp_path / "work")
    cache_features(dataset, work, CONFIG, progress=False)
    boxes = _random_boxes(60)
    with FeatureCache.open(work, "trainval") as cache:
        assert cache.has_flip
        for scale in range(len(SCALES)):
            got = cache.pooled("im00", boxes, scale, flipped=True)
            want = cache.pooled("im01", mirrored(boxes, WIDTH), scale, flipped=False)
            assert got.abs().sum() > 0  # a test on all-zero features would prove nothing
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            # and the mirror's flipped map is the original's plain one
            back = cache.pooled("im01", mirrored(boxes, WIDTH), scale, flipped=True)
            torch.testing.assert_close(back, cache.pooled("im00", boxes, scale), rtol=0, atol=0)

        # Fine-tuning's flipped batches take the same route (heads.finetune.pool_batch).
        records = [r for r in dataset.records if r.image_id == "im00"]
        table = WindowTable.build(records, lambda _: boxes, 1, FinetuneConfig())
        rows = np.arange(len(table.target))
        scales = rows % len(SCALES)
        got = pool_batch(cache, table, rows, scales, np.ones(len(rows), bool))
        want = cache.pooled("im01", mirrored(table.boxes[rows], WIDTH), scales, flipped=False)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_split_detected_on_is_cached_without_flips_unless_it_has_them(tmp_path: Path) -> None:
    """``detection_config``: no mirrored maps for a split only detected on, but a cache of it
    that an earlier run made with them (and otherwise the same settings) is kept, not rebuilt."""
    voc = make_tiny_voc(tmp_path / "voc", sizes=[(HEIGHT, WIDTH)] * 2)
    work = WorkDir.at(tmp_path / "work")
    assert detection_config(work, "trainval", CONFIG) == replace(CONFIG, flip=False)
    cache_features(load_voc(voc, "trainval"), work, CONFIG, progress=False)
    assert detection_config(work, "trainval", CONFIG) == CONFIG  # made with flips: kept
    assert detection_config(work, "trainval", replace(CONFIG, flip=False)) == CONFIG
    other = replace(CONFIG, scales=(64,))
    assert detection_config(work, "trainval", other) == replace(other, flip=False)


def test_models_fit_a_cache_with_or_without_flips_only() -> None:
    """A model trained on a cache with flips is used on one without (or the other way); any
    other difference in the settings still refuses it."""
    settings = feature_params(CONFIG)
    recorded = fingerprint(settings)
    assert same_window_features(recorded, {**settings, "flip": False})
    assert same_window_features(recorded, settings)
    assert not same_window_features(recorded, {**settings, "scales": [64]})
    assert not same_window_features(recorded, {**settings, "flip": False, "dtype": "float16"})
    rcnn = {"warp_size": 224, "context_padding": 16}  # a store without flips at all
    assert same_window_features(fingerprint(rcnn), rcnn)
    assert not same_window_features(fingerprint(rcnn), {**rcnn, "context_padding": 8})
