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
outside the image is the mean pixel (0 after preprocessing). Every window of a batch is sampled in
one ``grid_sample`` call, bilinear at the output pixel centres, with ``roi_align``'s border rule
(aligned, one sample per output pixel): a sample up to a pixel outside the image takes the edge
pixel, one further out is 0. ``roi_align`` gives the same samples, but torchvision runs it on one
CPU thread: 1.35 against 0.36 ms per 224 x 224 window on 2 cores, a tenth of R-CNN's time per
window, which inflated SPP's speed-up over it (BENCHMARKS.md, issue 20). R-CNN itself resizes the
in-image part to its rounded size and pads the rest, so the two differ by at most one output
pixel along the image border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

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
    height, width = image.shape[-2:]
    enlarged = context_boxes(boxes, size, padding)
    # Sample coordinates in pixel indices (pixel i's centre at i), per window and output pixel:
    # the region's continuous edges are [x1, x2 + 1), split into SIZE cells sampled at centres.
    centres = (np.arange(size) + 0.5) / size
    start, extent = enlarged[:, :2] - 0.5, enlarged[:, 2:] + 1.0 - enlarged[:, :2]
    xs = _grid_coordinates(start[:, 0:1] + centres * extent[:, 0:1], width)  # [N, size]
    ys = _grid_coordinates(start[:, 1:2] + centres * extent[:, 1:2], height)
    shape = (len(enlarged), size, size)
    grid = torch.stack((xs[:, None, :].expand(shape), ys[:, :, None].expand(shape)), dim=-1)
    source = image.float().expand(len(enlarged), -1, -1, -1)
    crops = F.grid_sample(
        source, grid.to(image.device), "bilinear", padding_mode="zeros", align_corners=False
    )
    return crops.to(image.dtype)


def _grid_coordinates(pixels: np.ndarray, side: int) -> torch.Tensor:
    """Pixel-index coordinates float64 -> grid_sample's (align_corners=False: x -> (2x + 1) / W
    - 1), float32, with roi_align's border rule applied first: a sample within a pixel outside
    the image moves onto its edge, one further out two pixels out, where every neighbour is
    outside and "zeros" padding gives exactly 0."""
    inside = (pixels >= -1) & (pixels <= side)
    pixels = np.where(inside, np.clip(pixels, 0, side - 1), -2.0)
    return torch.from_numpy(((2 * pixels + 1) / side - 1).astype(np.float32))


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

    def batches(self, boxes: np.ndarray) -> list[np.ndarray]:
        """BOXES in the batches ``pool5`` runs the trunk on (``batch_windows`` each)."""
        step = max(1, self.config.batch_windows)
        return [boxes[start : start + step] for start in range(0, len(boxes), step)]

    def pool5(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """pool5 [N, D] float32 (on the device) of BOXES in a prepared image."""
        out = torch.empty((len(boxes), self.dim), dtype=torch.float32, device=self.device)
        start = 0
        with torch.inference_mode(), autocast(self.device, self.config.precision):
            for batch in self.batches(boxes):
                crops = warp_windows(image, batch, self.size, self.config.context_padding)
                conv5 = self.trunk(device_input(crops))
                out[start : start + len(crops)] = image_spp(conv5, self.pyramid)
                start += len(crops)
        return out
