"""Tests of ``sppdet.detector.features.conv5``."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.detector.backbones.trunk import build_trunk, to_device
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING
from sppdet.detector.data.images import read_image
from sppdet.detector.features.conv5 import conv5_name, resized_size
from tests.detector.features.shared import CONFIG


def test_resized_size_and_the_cap():
    assert resized_size(375, 500, 688, 2000) == (688, 917)
    assert resized_size(500, 375, 600, None) == (800, 600)
    # A 100x1000 panorama at scale 480 would be 480x4800; the 2000 cap makes it 200x2000:
    # the effective scale is 200, not 480.
    assert resized_size(100, 1000, 480, 2000) == (200, 2000)
    assert resized_size(40, 200, 160, 300) == (60, 300)


def test_stored_maps_are_the_trunk_outputs(voc, built):
    work, stats = built
    assert (stats.images, stats.computed) == (5, 5)
    store = ShardedStore.open(work.features("trainval"), "features", "sppdet cache-features")
    trunk = to_device(build_trunk("zf5"), torch.device("cpu"))  # as cache-features runs it
    image = read_image(voc / "JPEGImages" / "im03.png")  # 40x200: capped at both scales
    for k, scale in enumerate(CONFIG.scales):
        h, w = resized_size(40, 200, scale, 300)
        interp = cv2.INTER_AREA if h * w < 40 * 200 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (w, h), interpolation=interp)
        x = ZF5_PREPROCESSING(resized)
        with torch.inference_mode():
            want = trunk(x)[0].half().numpy()
            want_flip = trunk(x.flip(-1))[0].half().numpy()
        got = store.get("im03", conv5_name(k))
        assert got.dtype == np.float16 and got.shape == want.shape
        assert np.array_equal(got, want)
        assert np.array_equal(store.get("im03", conv5_name(k, True)), want_flip)
    attrs = store.image_attrs("im03")
    assert (attrs["height"], attrs["width"]) == (40, 200)
    assert attrs["effective_scales"].tolist() == [60, 60]  # both scales capped to 60x300
    assert attrs["map_widths"].tolist() == [store.get("im03", "conv5_s0").shape[2]] * 2
    assert store.image_attrs("im00")["effective_scales"].tolist() == [100, 160]
    store.close()
