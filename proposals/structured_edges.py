"""OpenCV's structured-edge forest (``--edge-model``): model checks, edge and orientation maps.

The forest (Dollar & Zitnick) gives EdgeBoxes the edges it was designed for, but its
``model.yml.gz`` ships with no package (opencv_extra has one, under a non-commercial licence),
so it is optional: without it EdgeBoxes uses the built-in edges of proposals/edges.py. OpenCV
crashes the process on some malformed models, so a model is checked here before OpenCV loads it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.proposals.contrib import ximgproc

_MODEL_OPTIONS = ("stride", "shrinkNumber", "patchSize", "patchInnerSize", "numberOfTrees",
                  "numberOfTreesToEvaluate", "numberOfGradientOrientations",
                  "gradientNormalizationRadius", "selfsimilarityGridSize")  # fmt: skip
_MODEL_TREES = ("childs", "featureIds", "thresholds", "edgeBoundaries", "edgeBins")
_POSITIVE_OPTIONS = ("stride", "shrinkNumber", "patchSize", "numberOfTrees",
                     "numberOfTreesToEvaluate")  # fmt: skip
_MODEL_HINT = (
    "pass the structured-edge model.yml.gz of opencv_extra (testdata/cv/ximgproc/model.yml.gz), "
    "or leave out --edge-model to use the built-in edges"
)


def check_edge_model(path: str | Path) -> Path:
    """Validate a structured-edge model file before OpenCV sees it (a model without its trees
    crashes OpenCV with a floating-point exception, so it is checked field by field here)."""
    path = Path(path)
    if not path.is_file():
        raise SppdetError(f"{path}: edge model not found; {_MODEL_HINT}")
    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:  # the constructor wraps cv2.error in SystemError
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0].split("error: ")[-1][:120]
        raise SppdetError(
            f"{path}: not a structured-edge model ({reason}); {_MODEL_HINT}"
        ) from None
    try:
        if not storage.isOpened():
            raise SppdetError(f"{path}: cannot open the edge model; {_MODEL_HINT}")
        options = storage.getNode("options")
        missing = [f"options.{name}" for name in _MODEL_OPTIONS if options.getNode(name).empty()]
        missing += [name for name in _MODEL_TREES if storage.getNode(name).size() == 0]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise SppdetError(
                f"{path}: not a structured-edge model (missing {', '.join(missing[:3])}{more}); "
                f"{_MODEL_HINT}"
            )
        bad = [name for name in _POSITIVE_OPTIONS if options.getNode(name).real() <= 0]
        if bad:
            raise SppdetError(
                f"{path}: edge model has non-positive {', '.join(bad)}; {_MODEL_HINT}"
            )
    finally:
        storage.release()
    return path


@lru_cache(maxsize=2)
def _detector(path: str) -> Any:
    """OpenCV's StructuredEdgeDetection with the model at PATH."""
    return ximgproc().createStructuredEdgeDetection(str(check_edge_model(path)))


def structured_edge_maps(rgb: np.ndarray, model_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Edges and orientations from OpenCV's structured-edge forest, thinned as EdgeBoxes expects
    (``edgesNms`` with r=2, s=0, m=1, the settings of Dollar's edgeBoxes.m). Loaded once per
    process."""
    detector = _detector(str(model_path))
    edges = detector.detectEdges(rgb.astype(np.float32) / 255.0)
    orientation = detector.computeOrientation(edges)
    thin = detector.edgesNms(edges, orientation, r=2, s=0, m=1.0, isParallel=False)
    return np.ascontiguousarray(thin, np.float32), np.ascontiguousarray(orientation, np.float32)
