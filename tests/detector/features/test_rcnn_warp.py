"""Tests of ``sppdet.detector.features.rcnn_warp``: R-CNN's warping against independent
references, and pool5 of warped windows."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align

from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import RcnnConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.features.rcnn_warp import (
    RcnnFeaturizer,
    context_boxes,
    warp_size,
    warp_windows,
)


def test_warp_size_is_the_trunks_input_side_unless_set() -> None:
    sides = [warp_size(RcnnConfig(), arch) for arch in ("zf5", "alexnet", "vgg16")]
    assert sides == [224, 227, 224]  # 227 for AlexNet, as R-CNN warps
    assert warp_size(RcnnConfig(warp_size=96), "alexnet") == 96
    with pytest.raises(SppdetError, match="unknown backbone 'lenet'"):
        warp_size(RcnnConfig(), "lenet")


def test_context_boxes_by_hand() -> None:
    # w = 20, h = 40; scale 224/192: half-sizes 11.667 and 23.333 about the centre (20, 40).
    got = context_boxes(np.array([[10, 20, 29, 59]]), 224, 16)
    np.testing.assert_array_equal(got, [[8, 17, 32, 63]])
    # R-CNN's centre is x1 + w/2, half a pixel right of the true centre: with no padding the
    # region is the window shifted to one pixel past its right and bottom edges.
    np.testing.assert_array_equal(
        context_boxes(np.array([[3, 4, 50, 60]]), 224, 0), [[3, 4, 51, 61]]
    )
    # Half-way values round away from zero, as MATLAB's round: centre 0.5, half 1 -> -0.5, 1.5.
    np.testing.assert_array_equal(context_boxes(np.array([[0, 0, 0, 0]]), 4, 1), [[-1, -1, 2, 2]])


def test_warp_equals_bilinear_resize_of_the_enlarged_crop() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 90, 120)).astype(np.float32)
    size, padding = 24, 3
    boxes = np.array([[30, 20, 79, 69], [40, 35, 99, 80], [10, 10, 45, 60]], np.float32)
    warped = warp_windows(torch.from_numpy(image)[None], boxes, size, padding).numpy()
    for k, box in enumerate(context_boxes(boxes, size, padding).astype(int)):
        x1, y1, x2, y2 = box
        assert x1 >= 0 and y1 >= 0 and x2 < 120 and y2 < 90  # inside: no border effects
        crop = image[:, y1 : y2 + 1, x1 : x2 + 1].transpose(1, 2, 0)
        # Every crop is larger than the output, so OpenCV's half-pixel bilinear never clamps.
        assert crop.shape[0] >= size and crop.shape[1] >= size
        expected = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(warped[k], expected.transpose(2, 0, 1), atol=1e-4)


def test_warp_outside_the_image_is_the_mean() -> None:
    image = torch.full((1, 3, 40, 40), 5.0)
    # A window in the corner: its enlarged box starts 20 px left of and above the image.
    warped = warp_windows(image, np.array([[0, 0, 9, 9]], np.float32), 16, 6)[0]
    assert torch.all(warped[:, :4, :4] == 0)  # the far outside is 0 (the mean)
    assert torch.all(warped[:, -3:, -3:] == 5.0)  # inside the image: the image


def test_warp_equals_roi_align_inside_and_across_the_border() -> None:
    """The grid_sample warp against torchvision's roi_align (aligned, 1 sample per output pixel),
    which it replaces for speed: the same samples, with roi_align's border rule."""
    rng = np.random.default_rng(3)
    height, width, size, padding = 150, 200, 32, 4
    image = torch.from_numpy(rng.uniform(-128, 128, (1, 3, height, width)).astype(np.float32))
    x1, y1 = rng.integers(-5, width, 80), rng.integers(-5, height, 80)
    boxes = np.stack(
        [x1, y1, x1 + rng.integers(0, width // 2, 80), y1 + rng.integers(0, height // 2, 80)], 1
    ).astype(np.float32)
    enlarged = context_boxes(boxes, size, padding)
    rois = np.zeros((len(boxes), 5), np.float32)
    rois[:, 1:3], rois[:, 3:5] = enlarged[:, :2], enlarged[:, 2:] + 1.0
    expected = roi_align(image, torch.from_numpy(rois), (size, size), 1.0, 1, aligned=True)
    got = warp_windows(image, boxes, size, padding)
    assert (enlarged[:, :2] < -1).any() and (enlarged[:, 2:] > [width, height]).any()
    torch.testing.assert_close(got == 0, expected == 0)  # the same samples fall outside
    # Both compute a sample's position in float32, each to within a few roundings of its
    # magnitude (up to the image's side); bilinear values move by at most that times the
    # largest difference between neighbours (twice the largest value).
    position_error = 4 * torch.finfo(torch.float32).eps * max(height, width)
    torch.testing.assert_close(got, expected, rtol=0, atol=position_error * 2 * 128)


def float32_reduction_tolerance(trunk: torch.nn.Module, magnitude: float) -> float:
    """How far two float32 runs of TRUNK that sum in different orders (batch size, threads) may
    differ, for outputs of size MAGNITUDE.

    A float32 dot product of length K rounds like a random walk of K steps of the unit roundoff
    u = 2^-24 (eps / 2): about sqrt(K) * u relative to the values it sums. Each conv layer adds
    such an error and the layers after it scale it as they scale the signal (ReLU, LRN and max
    pooling do not enlarge it), so the errors add up to sum_l sqrt(K_l) * u * MAGNITUDE, with K_l
    = in_channels * kernel height * kernel width. For random ZF-5 and outputs up to ~340 that is
    ~4.6e-3; observed differences are ~2e-4. A fixed 1e-4 was below what reordering alone gives.
    """
    unit_roundoff = torch.finfo(torch.float32).eps / 2
    lengths = [
        m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        for m in trunk.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    return sum(math.sqrt(k) for k in lengths) * unit_roundoff * magnitude


def test_pool5_batched_equals_one_window_at_a_time() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 60, 70], [20, 30, 129, 99], [0, 0, 129, 99], [50, 10, 70, 40]])
    config = RcnnConfig(warp_size=96, context_padding=8, batch_windows=3)
    backbone = load_backbone("zf5")
    featurizer = RcnnFeaturizer(backbone, (1, 2, 3), config, torch.device("cpu"))
    got = featurizer.pool5(featurizer.prepare(rgb), boxes.astype(np.float32))
    assert got.shape == (4, 256 * (1 + 4 + 9))
    for k, box in enumerate(boxes):
        crop = warp_windows(featurizer.prepare(rgb), box[None].astype(np.float32), 96, 8)
        with torch.no_grad():
            conv5 = backbone.trunk(crop)
        expected = torch.cat([F.adaptive_max_pool2d(conv5, n).flatten(1) for n in (1, 2, 3)], 1)
        # The error of a sum scales with the magnitude of what is summed, not with each output:
        # an absolute tolerance from the largest value, no relative one.
        atol = float32_reduction_tolerance(backbone.trunk, float(expected.abs().max()))
        torch.testing.assert_close(got[k : k + 1], expected, rtol=0, atol=atol)
