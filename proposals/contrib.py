"""OpenCV's contrib module ``cv2.ximgproc`` (Selective Search, EdgeBoxes, structured edges),
looked up when a method runs rather than at import, so that an OpenCV without the contrib
modules (plain opencv-python installed over the contrib build) fails in one line that names the
package to install, for the CLI and the Python API alike."""

from __future__ import annotations

from typing import Any

import cv2

from sppdet.detector.core.errors import NO_XIMGPROC, SppdetError


def ximgproc() -> Any:
    """``cv2.ximgproc``, or a one-line ``SppdetError`` naming the package that brings it."""
    module = getattr(cv2, "ximgproc", None)
    if module is None:
        raise SppdetError(NO_XIMGPROC)
    return module


def segmentation() -> Any:
    """``cv2.ximgproc.segmentation``: Selective Search's and the graph segmentation's factories."""
    return ximgproc().segmentation
