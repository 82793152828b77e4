"""The images ``Detector.predict`` accepts: paths, H x W x 3 RGB uint8 arrays, or a list of them.

``image_inputs`` checks every input before any work starts (type, shape, dtype, the file's
existence), so a batch with a wrong item fails at once with a one-line error naming it;
``load_rgb`` then decodes a path (``read_image``: EXIF applied, RGB) or passes an array on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import read_image

ImageInput = str | os.PathLike | np.ndarray  # one image: a file or RGB pixels
Images = ImageInput | Sequence[ImageInput]  # what ``predict`` takes

ACCEPTED = "a path, an H x W x 3 RGB uint8 array, or a list of them"


def image_inputs(images: Images) -> list[Path | np.ndarray]:
    """IMAGES as a list of file paths and arrays, each checked (see the module docstring)."""
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        items: list[ImageInput] = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise SppdetError(
            f"predict: got {type(images).__name__} ; pass {ACCEPTED} (e.g. a list of paths)"
        )
    return [_checked(item, k) for k, item in enumerate(items)]


def _checked(item: ImageInput, k: int) -> Path | np.ndarray:
    if isinstance(item, np.ndarray):
        return _checked_array(item, k)
    if not isinstance(item, (str, os.PathLike)):
        raise SppdetError(f"predict: image {k} is a {type(item).__name__} ; pass {ACCEPTED}")
    path = Path(item)
    if path.is_dir():
        raise SppdetError(f"{path}: a folder, not an image file ; pass the image files in it")
    if not path.is_file():
        raise SppdetError(f"{path}: no such image file ; check the path")
    return path


def _checked_array(array: np.ndarray, k: int) -> np.ndarray:
    where = f"predict: image {k} (array)"
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise SppdetError(
            f"{where}: shape {array.shape} ; pass H x W x 3 RGB pixels (one image per array; "
            "grey images: np.stack([a] * 3, axis=-1))"
        )
    if array.dtype != np.uint8:
        raise SppdetError(
            f"{where}: dtype {array.dtype} ; pass uint8 pixels 0-255 (e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1])"
        )
    return np.ascontiguousarray(array)


def load_rgb(image: Path | np.ndarray) -> np.ndarray:
    """The RGB uint8 pixels [H, W, 3] of a checked input."""
    return read_image(image) if isinstance(image, Path) else image
