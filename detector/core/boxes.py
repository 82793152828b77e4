"""Box geometry with the PASCAL +1 pixel convention, NMS and R-CNN regression deltas.

Boxes are [N, 4] x1 y1 x2 y2, 0-based pixel indices with both ends inclusive, so a box covers
(x2 - x1 + 1) x (y2 - y1 + 1) pixels. Every function is vectorised over boxes.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision


def areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in A [N, 4] with every box in B [M, 4] -> [N, M], +1 convention."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.where(inter > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    classes: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first.

    A box is suppressed when its IoU with a kept box is > iou_threshold. With CLASSES ([N] ints),
    only boxes of the same class suppress each other (one batched call for all classes). The
    one place that runs torchvision's NMS: it measures IoU in continuous coordinates, and shifting
    x2, y2 by +1 turns that into the devkit's inclusive-pixel IoU exactly (in float64). The boxes
    and scores are moved to DEVICE for it (a GPU's kernel); the kept indices come back as numpy.
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    shifted = torch.as_tensor(np.asarray(boxes, np.float64)).to(device, copy=True)
    shifted[:, 2:] += 1
    weights = torch.as_tensor(np.asarray(scores, np.float64)).to(device)
    if classes is None:
        keep = torchvision.ops.nms(shifted, weights, iou_threshold)
    else:
        labels = torch.as_tensor(np.asarray(classes)).to(device)
        keep = torchvision.ops.batched_nms(shifted, weights, labels, iou_threshold)
    return keep.cpu().numpy()


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    out = np.asarray(boxes, np.float32).copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width - 1)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height - 1)
    return out


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    # R-CNN's parameterisation (SPEC.md): pw = x2 - x1, px = x1 + pw/2, no +1.
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_deltas(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R-CNN regression targets (dx, dy, dw, dh) taking PROPOSALS onto TARGETS, both [N, 4]."""
    eps = np.finfo(np.float64).eps
    px, py, pw, ph = _centre_size(np.asarray(proposals, np.float64))
    gx, gy, gw, gh = _centre_size(np.asarray(targets, np.float64))
    pw, ph = pw + eps, ph + eps
    return np.stack(
        [(gx - px) / pw, (gy - py) / ph, np.log((gw + eps) / pw), np.log((gh + eps) / ph)], axis=1
    )


def decode_deltas(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of ``encode_deltas``: apply DELTAS [N, 4] to PROPOSALS [N, 4]."""
    px, py, pw, ph = _centre_size(np.asarray(proposals, np.float64))
    d = np.asarray(deltas, np.float64)
    cx, cy = px + d[:, 0] * pw, py + d[:, 1] * ph
    w, h = pw * np.exp(d[:, 2]), ph * np.exp(d[:, 3])
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
