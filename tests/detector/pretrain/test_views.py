"""Tests of ``sppdet.detector.pretrain.views``: view geometry, and the full-image and multi-view
scores against their definitions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.classifier import load_classifier
from sppdet.detector.pretrain.images import center_crop
from sppdet.detector.pretrain.views import (
    ViewSettings,
    check_views,
    default_views,
    full_image_scores,
    multiview_scores,
    view_windows,
)
from sppdet.detector.spp.image_spp import image_spp
from tests.detector.pretrain.shared import random_checkpoint
from tests.detector.pretrain.shared import random_image as image

pytestmark = pytest.mark.usefixtures("one_thread")


# Scores of equal windows computed in batches of other shapes: fc6 sums 12,800 float32 products
# (256 channels x 50 bins) in an order that depends on the batch, about sqrt(12,800)*eps = 1.4e-5
# relative per layer; over fc6-fc8 and the softmax about 5e-5, so 1e-4 leaves a factor of 2.
FC_RTOL = 1e-4


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    return load_classifier(random_checkpoint(path, ("a", "b", "c"), False))


# ---------------------------------------------------------------------------------- windows


def test_view_windows_by_hand():
    w5 = view_windows(100, 150, 64, 5)
    # Corners, then the centre ((150 - 64) // 2 = 43, (100 - 64) // 2 = 18).
    np.testing.assert_array_equal(
        w5,
        [[0, 0, 63, 63], [86, 0, 149, 63], [0, 36, 63, 99], [86, 36, 149, 99], [43, 18, 106, 81]],
    )
    w9 = view_windows(100, 150, 64, 9)
    assert len(w9) == 9 and {tuple(r) for r in w5} <= {tuple(r) for r in w9}
    assert [43, 0, 106, 63] in w9.tolist() and [0, 18, 63, 81] in w9.tolist()


def test_default_views_follow_the_paper():
    views = default_views(224, 0.875)
    assert (views.size, views.full_side, views.view_scales, views.count) == (224, 256, (256,), 10)
    assert default_views(224, 0.875, 18).count == 18
    with pytest.raises(SppdetError, match="--views 12"):
        default_views(224, 0.875, 12)
    with pytest.raises(SppdetError, match="at least the view size 224"):
        check_views(ViewSettings(224, 256, (200,)))


# ------------------------------------------------------------------------------------ views


def test_full_image_view_of_a_square_equals_the_centre_crop_of_the_same_pixels(clf):
    big = image(128, 128)
    crop_view = center_crop(big, 0.875, 112)  # 0.875 * 128 = 112 pixels from (8, 8): no resize
    np.testing.assert_array_equal(crop_view, big[8:120, 8:120])
    with torch.inference_mode():
        crop_logits = clf.model(clf.preprocessing(crop_view))[0]
    full_logits = full_image_scores(clf, big[8:120, 8:120], side=112)
    assert torch.equal(crop_logits, full_logits)
    # On a non-square image the full view sees more than the centre crop.
    wide = image(112, 170, seed=1)
    assert not torch.allclose(
        full_image_scores(clf, wide, 112),
        clf.model(clf.preprocessing(center_crop(wide, 1.0, 112)))[0].detach(),
    )


def test_full_image_view_uses_whole_map_spp_at_the_given_side(clf):
    region = image(90, 140, seed=2)
    resized = cv2.resize(region, (round(140 * 112 / 90), 112), interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        maps = clf.model.trunk(clf.preprocessing(resized))
        expected = clf.model.head(image_spp(maps, (1, 2, 3, 6)))[0]
    assert maps.shape[-2:] == (6, 9)  # 112 x 174 pixels: 54x85, 27x42, 12x19, 6x9
    torch.testing.assert_close(full_image_scores(clf, region, 112), expected)


def test_a_view_covering_the_whole_map_equals_whole_image_spp(clf):
    square = image(112, 112, seed=3)
    views = ViewSettings(size=112, full_side=112, view_scales=(112,), positions=5, flip=False)
    scores = multiview_scores(clf, square, views)
    full = torch.softmax(full_image_scores(clf, square, 112), 0)
    assert scores.shape == (5, 3)
    for row in scores:  # five identical windows, each the whole image
        torch.testing.assert_close(row, full, rtol=FC_RTOL, atol=1e-6)


def test_multiview_of_a_mirrored_image_is_the_same_set_of_views(clf):
    region = image(96, 130, seed=4)
    views = ViewSettings(size=64, full_side=73, view_scales=(73, 90), positions=9, flip=True)
    scores = multiview_scores(clf, region, views)
    mirrored = multiview_scores(clf, np.ascontiguousarray(region[:, ::-1]), views)
    assert scores.shape == (views.count, 3) == (36, 3)
    torch.testing.assert_close(scores.mean(0), mirrored.mean(0), rtol=FC_RTOL, atol=1e-6)
    # Corner views differ from each other: the windows really move on the map.
    assert not torch.allclose(scores[0], scores[2])


def test_multiview_corner_window_lies_on_the_right_cells(clf):
    """A corner window of a larger image sees the top-left cells only: putting noise in the far
    corner does not change the top-left view's score (the receptive fields are limited)."""
    region = image(240, 240, seed=5)
    changed = region.copy()
    changed[200:, 200:] = 255 - changed[200:, 200:]
    views = ViewSettings(size=64, full_side=240, view_scales=(240,), positions=5, flip=False)
    a, b = multiview_scores(clf, region, views), multiview_scores(clf, changed, views)
    torch.testing.assert_close(a[0], b[0])  # top-left window: cells far from the change
    assert not torch.allclose(a[3], b[3])  # bottom-right window sees it
