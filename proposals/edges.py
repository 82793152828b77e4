"""The built-in edge and orientation maps for EdgeBoxes, from OpenCV/NumPy primitives only.

EdgeBoxes scores a box by the edge groups wholly inside it, so it needs thin edges with
magnitudes in [0, 1] (weak ones below its 0.1 cut-off) and an orientation per pixel. OpenCV makes
both with a structured-edge random forest (Dollar & Zitnick), whose ``model.yml.gz`` no package
ships and which carries a non-commercial licence: proposals/structured_edges.py uses it when the
user has it (``--edge-model``); without it this detector stands in:

1. RGB -> CIE Lab in [0, 1]-ish units (L/100, a/255, b/255): colour edges count, as in the forest's
   own features.
2. For each Gaussian scale sigma: Sobel derivatives of every channel, summed into the colour
   structure tensor (Di Zenzo) and smoothed at sigma 1 (integration scale). The magnitude is the
   square root of its largest eigenvalue, times sigma (scale normalisation), divided by its local
   mean over a (2r+1)^2 window plus 0.01, which evens out contrast across the image like the
   forest's normalised gradient channels. Magnitudes are averaged over the scales: fine texture
   responds at the small scale only, object outlines at all of them.
3. Orientation: the dominant gradient direction of the tensor summed over scales,
   0.5 * atan2(2 Jxy, Jxx - Jyy) mod pi. Like OpenCV's ``computeOrientation`` it is the direction
   across the edge (the edge normal), in [0, pi), which is what EdgeBoxes' affinities expect.
4. Non-maximum thinning: a pixel survives when its magnitude (times 1.01, Dollar's conservative
   multiplier) is at least that of both neighbours one pixel away along the normal (bilinear).
5. Scaling: divide by the ``edge_percentile`` of the magnitudes (at least MIN_SCALE), clip to
   [0, 1], raise to ``edge_gamma``: object outlines land near 1 and texture falls under
   EdgeBoxes' 0.1 cut-off.
"""

from __future__ import annotations

import cv2
import numpy as np

from sppdet.detector.core.config import ProposalConfig

LAB_UNITS = np.array([1 / 100, 1 / 255, 1 / 255], np.float32)
NMS_MULTIPLIER = 1.01
NORM_EPS = 0.01  # keeps the contrast normalisation finite in flat regions
# The percentile scale never drops below this: natural images give 1.2-1.4, a 10-grey-level step
# alone about 0.7, so a nearly flat image's rounding noise is not stretched to strong edges.
MIN_SCALE = 0.5
# The ProposalConfig fields this detector reads: they decide the boxes only when no edge model
# is given, so only then do they go into an edge-using method's fingerprint.
BUILTIN_EDGE_SETTINGS = ("edge_sigmas", "edge_norm_radius", "edge_percentile", "edge_gamma")


def builtin_edge_maps(rgb: np.ndarray, cfg: ProposalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Thinned edge magnitudes in [0, 1] and edge-normal orientations in [0, pi), float32 [H, W]."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab) * LAB_UNITS
    window = (2 * cfg.edge_norm_radius + 1,) * 2
    magnitude = np.zeros(lab.shape[:2], np.float32)
    tensor = np.zeros((3, *lab.shape[:2]), np.float32)
    for sigma in cfg.edge_sigmas:
        smooth = cv2.GaussianBlur(lab, (0, 0), sigma)
        gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8  # /8: Sobel's gain -> d/dx
        gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8
        jxx = cv2.GaussianBlur((gx * gx).sum(axis=2), (0, 0), 1.0)
        jyy = cv2.GaussianBlur((gy * gy).sum(axis=2), (0, 0), 1.0)
        jxy = cv2.GaussianBlur((gx * gy).sum(axis=2), (0, 0), 1.0)
        largest = 0.5 * (jxx + jyy + np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2))
        scale_mag = np.sqrt(np.maximum(largest, 0)) * sigma
        if cfg.edge_norm_radius > 0:
            scale_mag /= cv2.blur(scale_mag, window) + NORM_EPS
        magnitude += scale_mag / len(cfg.edge_sigmas)
        tensor += np.stack([jxx, jyy, jxy]) * sigma**2
    orientation = np.mod(0.5 * np.arctan2(2 * tensor[2], tensor[0] - tensor[1]), np.pi)
    thin = thin_edges(magnitude, orientation)
    scale = max(float(np.percentile(magnitude, cfg.edge_percentile)), MIN_SCALE)
    edges = np.clip(thin / scale, 0, 1) ** cfg.edge_gamma
    return edges.astype(np.float32), orientation.astype(np.float32)


def thin_edges(magnitude: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Zero every pixel that is not a maximum along its normal (one pixel each way, bilinear)."""
    height, width = magnitude.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = np.cos(orientation).astype(np.float32)
    dy = np.sin(orientation).astype(np.float32)
    keep = np.ones(magnitude.shape, bool)
    for sign in (1.0, -1.0):
        neighbour = cv2.remap(
            magnitude, xs + sign * dx, ys + sign * dy, cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        keep &= magnitude * NMS_MULTIPLIER >= neighbour
    return np.where(keep, magnitude, 0).astype(np.float32)
