"""R-CNN's pool5 of windows, for the speed and accuracy comparison with SPP (paper section 4.2).

R-CNN (Girshick et al., 2014) computes a window's features by cropping the window from the image
with context, warping the crop to the network's input size and running the whole trunk on it:
one forward pass per window, where SPP runs the trunk once per image (and scale). Here both paths
use the same trunk, and everything after pool5 is shared: pool5 of a warped window is the
whole-map spatial pyramid pooling of its conv5 map (``sppdet.detector.spp.image_spp``, the
Appendix A bins) with the SPP cache's pyramid, so it has the SPP path's dimension and the same
fc6-fc7 heads, SVMs and box regressors apply unchanged. With the single level {6} it is R-CNN's
fixed 6x6 pool5 grid.

Warping (R-CNN's ``rcnn_im_crop``, "warp" mode, padding p = 16): the window is enlarged about its
centre by ``size / (size - 2p)`` and rounded to whole pixels, so that once the enlarged region is
warped to ``size x size`` the window itself fills the central ``size - 2p`` pixels with p pixels of
context on each side. The region is sampled bilinearly without anti-aliasing, and what falls
outside the image is the mean pixel (0 after preprocessing). We sample every window of an image in
one batched ``roi_align`` call (aligned, one sample per output pixel: bilinear interpolation at
the output pixel centres). R-CNN instead resizes the in-image part to its rounded size and pads
the rest, so the two differ by at most one output pixel along the image border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.backbones.trunk import to_device
from sppdet.detector.backbones.weights import Backbone
from sppdet.detector.core.config import RcnnConfig
from sppdet.detector.core.device import autocast, check_precision, device_input
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.image_spp import image_spp


def warp_size(config: RcnnConfig, arch: str) -> int:
    """The side windows are warped to: the configured one, else the input side ARCH was designed
    for (227 for AlexNet, as in R-CNN)."""
    return int(config.warp_size or backbone_spec(arch).input_size)


def context_boxes(boxes: np.ndarray, size: int, padding: int) -> np.ndarray:
    """R-CNN's enlarged windows, float64 [N, 4] inclusive pixel indices (may leave the image).

    As ``rcnn_im_crop``: the half-sizes grow by size / (size - 2 * padding) about the centre
    x1 + w/2 (R-CNN's, half a pixel right of the window's own centre, kept for fidelity) and the
    corners are rounded half away from zero, as MATLAB's ``round``.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / (size - 2.0 * padding)
    half = (b[:, 2:] - b[:, :2] + 1.0) / 2.0
    centre = b[:, :2] + half
    corners = np.concatenate([centre - half * scale, centre + half * scale], axis=1)
    return np.sign(corners) * np.floor(np.abs(corners) + 0.5)


def warp_windows(image: torch.Tensor, boxes: np.ndarray, size: int, padding: int) -> torch.Tensor:
    """Warped windows [N, 3, size, size] of a preprocessed image [1, 3, H, W] (its device).

    Output pixel (i, j) of window k samples the enlarged window at its pixel centre bilinearly;
    samples more than a pixel outside the image are 0 (the mean, after preprocessing).
    """
    enlarged = context_boxes(boxes, size, padding)
    rois = np.zeros((len(enlarged), 5), np.float32)
    rois[:, 1:3] = enlarged[:, :2]
    rois[:, 3:5] = enlarged[:, 2:] + 1.0  # inclusive indices -> continuous pixel edges
    rois_t = torch.from_numpy(rois).to(image.device, image.dtype)
    return roi_align(image, rois_t, (size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


class RcnnFeaturizer:
    """pool5 of windows the R-CNN way: warp, run the trunk per window (batched), pool the map."""

    def __init__(
        self,
        backbone: Backbone,
        pyramid: Sequence[int],
        config: RcnnConfig,
        device: torch.device,
    ) -> None:
        check_precision(config.precision)  # before any work, not at the first batch
        self.preprocessing = backbone.preprocessing
        self.trunk = to_device(backbone.trunk, device)
        self.pyramid = check_pyramid(pyramid)
        self.config = config
        self.device = device
        self.size = warp_size(config, backbone.arch)
        self.dim = pyramid_dim(self.pyramid, backbone.channels)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> the preprocessed image [1, 3, H, W] on the device."""
        return self.preprocessing(image, self.device)

    def pool5(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """pool5 [N, D] float32 (on the device) of BOXES in a prepared image."""
        out = torch.empty((len(boxes), self.dim), dtype=torch.float32, device=self.device)
        step = max(1, self.config.batch_windows)
        with torch.inference_mode(), autocast(self.device, self.config.precision):
            for start in range(0, len(boxes), step):
                crops = warp_windows(
                    image, boxes[start : start + step], self.size, self.config.context_padding
                )
                conv5 = self.trunk(device_input(crops))
                out[start : start + len(crops)] = image_spp(conv5, self.pyramid)
        return out
