"""Tests of ``sppdet.detector.features.reader``.

FeatureCache: pooled window features from the conv5 cache, checked against direct pooling; and
``cache_info``'s summary of a cache, checked against the store's files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import SppConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.voc import load_voc
from sppdet.detector.features.reader import FeatureCache, cache_info
from sppdet.detector.features.writer import cache_features
from sppdet.detector.spp.scales import best_scale_area, best_scale_released
from tests.detector.features.shared import CONFIG, make_tiny_voc
from tests.detector.spp.shared import reference_spp

PYRAMID = (1, 2, 3, 6)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> WorkDir:
    voc = make_tiny_voc(tmp_path_factory.mktemp("voc"))
    work = WorkDir.at(tmp_path_factory.mktemp("work"))
    cache_features(load_voc(voc, "trainval"), work, CONFIG, progress=False)
    return work


def released_cells(boxes: np.ndarray, effective: int, min_side: int, map_h: int, map_w: int):
    """The released ZF-5 mapping written out in its own 1-based units."""
    b = boxes * (effective - 1) / (min_side - 1) + 1
    left = np.floor((b[:, :2] - 6.5) / 16) + 1
    right = np.ceil((b[:, 2:] - 35.5) / 16) + 1
    bad = left > right
    mid = np.floor((left + right) / 2)
    left, right = np.where(bad, mid, left), np.where(bad, mid, right)
    top = np.array([map_w, map_h])
    return (np.concatenate([np.clip(left, 1, top), np.clip(right, 1, top)], 1) - 1).astype(int)


def random_boxes(rng, n: int, height: int, width: int) -> np.ndarray:
    x = np.sort(rng.uniform(0, width - 1, (n, 2)), 1)
    y = np.sort(rng.uniform(0, height - 1, (n, 2)), 1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1).round()


def direct(cache: FeatureCache, image_id: str, boxes, scale: int, flipped: bool) -> np.ndarray:
    info = cache.image_info(image_id)
    conv = cache.conv5(image_id, scale, flipped).numpy()
    if flipped:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = info.width - 1 - boxes[:, [2, 0]]
    cells = released_cells(
        boxes, info.effective_scales[scale], info.min_side, conv.shape[1], conv.shape[2]
    )
    return reference_spp(conv, cells, PYRAMID).astype(np.float32)


def test_open_checks_the_fingerprint(work):
    with FeatureCache.open(work, "trainval", expect=CONFIG) as cache:
        assert (cache.num_scales, cache.has_flip, cache.dim) == (2, True, 256 * 50)
        assert cache.image_ids == [f"im{i:02d}" for i in range(5)]
    with pytest.raises(SppdetError, match=r"scales.*cache-features --force"):
        FeatureCache.open(work, "trainval", expect=dataclasses.replace(CONFIG, scales=(100,)))
    with pytest.raises(SppdetError, match="run `sppdet cache-features` first"):
        FeatureCache.open(work, "test")


@pytest.mark.parametrize("flipped", [False, True])
def test_pooled_at_a_given_scale_equals_direct_pooling(work, flipped):
    rng = np.random.default_rng(0)
    with FeatureCache.open(work, "trainval") as cache:
        for image_id in ("im00", "im01", "im03"):
            info = cache.image_info(image_id)
            boxes = random_boxes(rng, 40, info.height, info.width)
            for scale in range(2):
                got = cache.pooled(image_id, boxes, scale, flipped)
                assert got.dtype == torch.float32 and got.shape == (40, cache.dim)
                assert np.array_equal(got.numpy(), direct(cache, image_id, boxes, scale, flipped))


def test_best_scale_and_mixed_scales(work):
    rng = np.random.default_rng(1)
    # A 64 px image is small for the 208 px target side; a 64 px target gives both scales.
    with FeatureCache.open(work, "trainval", spp=SppConfig(released_target_side=64)) as cache:
        info = cache.image_info("im02")
        boxes = random_boxes(rng, 60, info.height, info.width)
        best = best_scale_released(boxes, 64, (100, 160), target_side=64)
        assert np.array_equal(cache.best_scale("im02", boxes), best) and len(set(best)) == 2
        by_best = cache.pooled("im02", boxes)
        for scale in range(2):
            rows = best == scale
            want = direct(cache, "im02", boxes[rows], scale, False)
            assert np.array_equal(by_best[rows].numpy(), want)
        mixed = rng.integers(0, 2, 60)
        got = cache.pooled("im02", boxes, mixed, True)
        for i in range(0, 60, 7):
            want = direct(cache, "im02", boxes[i : i + 1], int(mixed[i]), True)
            assert np.array_equal(got[i : i + 1].numpy(), want)
        with pytest.raises(IndexError):
            cache.pooled("im02", boxes, 2)
        with pytest.raises(ValueError, match="scale indices"):
            cache.pooled("im02", boxes, np.zeros(3, int))


def test_paper_scale_rule(work):
    spp = SppConfig(scale_rule="area224")
    with FeatureCache.open(work, "trainval", spp=spp) as cache:
        boxes = np.array([[0, 0, 20, 20], [0, 0, 63, 63]], float)
        assert np.array_equal(
            cache.best_scale("im02", boxes), best_scale_area(boxes, 64, (100, 160))
        )


def test_capped_image_maps_with_its_effective_scale(work):
    with FeatureCache.open(work, "trainval") as cache:
        info = cache.image_info("im03")  # 40x200 with a 300 px cap: shorter side 60, not 160
        assert info.effective_scales.tolist() == [60, 60]
        box = np.array([[50, 10, 60, 20]], float)
        # x1: 50*59/39 = 75.6 -> floor((75.6 + 6.5 - 20)/16 + 0.5) = 4; x2: 60*59/39 = 90.8 ->
        # ceil((90.8 - 6.5 - 20)/16 - 0.5) = 4; y1 -> 0, y2 -> 0. (Scale 160 would give x = 12.)
        assert cache.cells("im03", box, np.array([1])).tolist() == [[4, 0, 4, 0]]


def test_pyramid_comes_from_the_recorded_settings(tmp_path):
    voc = make_tiny_voc(tmp_path / "voc", sizes=[(50, 60), (70, 40)])
    config = dataclasses.replace(CONFIG, flip=False, scales=(100,))
    cache_features(
        load_voc(voc, "trainval"), tmp_path, config, SppConfig(pyramid=(6,)), progress=False
    )
    with FeatureCache.open(tmp_path, "trainval") as cache:
        assert cache.pyramid == (6,) and cache.dim == 256 * 36
        assert cache.pooled("im00", np.array([[0, 0, 59, 49]], float)).shape == (1, 256 * 36)
        with pytest.raises(SppdetError, match="--flip"):
            cache.conv5("im00", 0, flipped=True)
    with FeatureCache.open(tmp_path, "trainval", spp=SppConfig()) as cache:
        assert cache.dim == 256 * 50


def test_reads_only_the_maps_it_needs(work):
    with FeatureCache.open(work, "trainval") as cache:
        boxes = np.array([[0, 0, 30, 30], [5, 5, 40, 50]], float)
        out = torch.zeros(5, cache.dim)
        got = cache.pooled("im01", boxes, 0, out=out)
        assert got.data_ptr() == out.data_ptr() and got.shape == (2, cache.dim)
        assert set(cache._maps) == {("im01", 0, False)}
        cache.pooled("im04", boxes, 1)
        assert set(cache._maps) == {("im04", 1, False)}  # the previous image's maps are dropped
        cache.keep_images(2)
        cache.pooled("im02", boxes, 0)
        cache.pooled("im03", boxes, 0)
        assert {k[0] for k in cache._maps} == {"im02", "im03"}
        assert cache.pooled("im04", np.zeros((0, 4))).shape == (0, cache.dim)
        with pytest.raises(ValueError, match="out must be"):
            cache.pooled("im04", boxes, 0, out=torch.zeros(1, cache.dim))


def test_cache_info_describes_the_store_files(work, tmp_path):
    root = work.features("trainval")
    shards = sorted(root.glob("shard-*.h5"))
    stored = json.loads((root / "store.json").read_text())
    info = cache_info(work, "trainval")
    assert (info.path, info.images, info.images_cached) == (root, 5, 5)
    assert (info.shards_done, info.shards_total) == (3, 3) == (len(shards), 3)  # 5 images by 2
    assert (info.backbone, info.weights, info.scales) == ("zf5", "random:seed0", [100, 160])
    assert (info.max_size, info.dtype, info.flip) == (300, "float16", True)
    assert info.preprocessing == stored["params"]["preprocessing"]
    assert info.fingerprint == stored["fingerprint"]
    assert info.bytes_total == sum(p.stat().st_size for p in shards)
    assert info.bytes_per_image == info.bytes_total / 5
    assert info.to_dict() == {
        "path": str(root),
        "images": 5,
        "images_cached": 5,
        "shards": "3/3",
        "backbone": "zf5",
        "weights": "random:seed0",
        "scales": [100, 160],
        "max_size": 300,
        "dtype": "float16",
        "flip": True,
        "preprocessing": stored["params"]["preprocessing"],
        "bytes_total": info.bytes_total,
        "bytes_per_image": info.bytes_total / 5,
        "fingerprint": stored["fingerprint"],
    }
    # An interrupted cache: shard 1 (images im02, im03) missing.
    partial = WorkDir.at(tmp_path)
    shutil.copytree(root, partial.features("trainval"))
    (partial.features("trainval") / "shard-00001.h5").unlink()
    info = cache_info(partial, "trainval")
    assert (info.images, info.images_cached, info.shards_done) == (5, 3, 2)
    assert info.to_dict()["shards"] == "2/3"
    assert info.bytes_total == shards[0].stat().st_size + shards[2].stat().st_size
    assert info.bytes_per_image == info.bytes_total / 3
