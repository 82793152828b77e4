"""``Detections``: what ``Detector.predict`` returns for one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sppdet.detector.detection.images import ImageDetection


@dataclass(frozen=True)
class Detections:
    """The detections of one image, best first (descending ``scores``).

    ``boxes`` [N, 4] float32 are x1 y1 x2 y2 in 0-based, inclusive pixels of the image as given
    (EXIF orientation applied to files); ``labels`` [N] int64 index ``class_names``.
    ``scores`` [N] float32 are probabilities of being a correct detection when ``calibrated``:
    the SVM margin through the model's Platt sigmoid (or the fine-tuned net's softmax, with
    that scorer); for SVMs trained before calibration existed, the margins themselves.
    ``margins`` [N] float32 are the scorer's raw scores, which VOC results files rank by: the
    SVM margins (with the softmax scorer, the probabilities again).
    """

    boxes: np.ndarray
    scores: np.ndarray
    margins: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    calibrated: bool

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: slice | np.ndarray) -> Detections:
        """The detections INDEX selects (a slice, e.g. ``found[:5]`` for the best five, or an
        index or boolean array), in their order."""
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.margins[index],
            self.labels[index],
            self.class_names,
            self.calibrated,
        )

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[int(k)] for k in self.labels]

    def to_json(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per detection: class, score, box (and the margin, when the score
        is a calibrated probability)."""
        return [
            ImageDetection(
                self.class_names[int(label)],
                float(score),
                [float(v) for v in box],
                float(margin) if self.calibrated else None,
            ).to_json()
            for box, score, margin, label in zip(
                self.boxes, self.scores, self.margins, self.labels, strict=True
            )
        ]
