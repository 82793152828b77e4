"""Training windows of one image: proposals plus ground truth, with their overlaps and labels.

Every training stage starts here: fine-tuning (foreground IoU >= 0.5, background [0.1, 0.5)),
the SVMs (positives are the ground-truth boxes, negatives IoU < 0.3 with every box of the class)
and box regression (IoU > 0.5). Difficult boxes count as ground truth throughout, so a window on
a difficult object is never taken as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.data.records import ImageRecord

BACKGROUND = -1


@dataclass
class ImageWindows:
    boxes: np.ndarray  # [N, 4] float32: the ground-truth boxes first, then the proposals
    is_gt: np.ndarray  # [N] bool
    max_iou: np.ndarray  # [N] float64, best IoU with any ground-truth box (0 when none)
    gt_index: np.ndarray  # [N] int64, that box's index (-1 when none)
    class_iou: np.ndarray  # [N, K] float64, best IoU with the boxes of each class

    def best_label(self, labels: np.ndarray) -> np.ndarray:
        """Class of the best-overlapping ground-truth box per window (BACKGROUND when none)."""
        if len(labels) == 0:
            return np.full(len(self.boxes), BACKGROUND, np.int64)
        return np.where(self.gt_index >= 0, labels[np.maximum(self.gt_index, 0)], BACKGROUND)


def image_windows(record: ImageRecord, proposals: np.ndarray, num_classes: int) -> ImageWindows:
    gt = record.boxes.astype(np.float32).reshape(-1, 4)
    boxes = np.concatenate([gt, np.asarray(proposals, np.float32).reshape(-1, 4)])
    is_gt = np.arange(len(boxes)) < len(gt)
    if len(gt) == 0:
        zeros = np.zeros(len(boxes))
        return ImageWindows(
            boxes, is_gt, zeros, np.full(len(boxes), -1), np.zeros((len(boxes), num_classes))
        )
    iou = iou_matrix(boxes, gt)  # [N, G]
    one_hot = np.eye(num_classes, dtype=bool)[record.labels]  # [G, K]
    class_iou = np.where(one_hot[None], iou[:, :, None], 0.0).max(axis=1)
    return ImageWindows(boxes, is_gt, iou.max(axis=1), iou.argmax(axis=1), class_iou)


def finetune_labels(
    windows: ImageWindows, labels: np.ndarray, fg_iou: float, bg_low: float
) -> np.ndarray:
    """Softmax targets: class + 1 at IoU >= fg_iou, 0 (background) in [bg_low, fg_iou), else -1."""
    target = np.full(len(windows.boxes), -1, np.int64)
    background = (windows.max_iou >= bg_low) & (windows.max_iou < fg_iou)
    target[background] = 0
    foreground = windows.max_iou >= fg_iou
    target[foreground] = windows.best_label(labels)[foreground] + 1
    return target
