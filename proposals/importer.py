"""Published proposal files: R-CNN's selective-search .mat boxes, in our box convention.

R-CNN distributes Selective Search boxes as a .mat file with two cell arrays of equal length:
``images`` (image ids) and ``boxes`` (one [M, 4] array per image, rows [y1 x1 y2 x2], 1-based
inclusive pixels). They become 0-based [x1 y1 x2 y2]: x1 = col2 - 1, y1 = col1 - 1, x2 = col4 - 1,
y2 = col3 - 1. MATLAB v5/v7 files are read with SciPy, v7.3 (HDF5) files through sppdet.cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.matfile import is_hdf5_mat, read_cell_arrays
from sppdet.detector.core.errors import SppdetError

VARIABLES = ("images", "boxes")


def rcnn_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[M, 4] 1-based [y1 x1 y2 x2] -> float64 [M, 4] 0-based [x1 y1 x2 y2]."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return b[:, [1, 0, 3, 2]] - 1


def _as_text(value: Any) -> str:
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:  # scipy nests cells in 1x1 object arrays
        array = np.asarray(array.ravel()[0])
    if array.dtype.kind in "US":
        return "".join(str(s) for s in array.ravel()).strip()
    if array.dtype.kind in "iu" and array.ndim <= 2:  # a numeric id, e.g. 5 for 000005
        return str(int(array.ravel()[0])) if array.size == 1 else ""
    return ""


def _read_v5(path: Path) -> dict[str, list[Any]]:
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(VARIABLES))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise SppdetError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    out: dict[str, list[Any]] = {}
    for name in VARIABLES:
        if name not in mat:
            raise SppdetError(f"{path}: MATLAB file has no variable {name!r} (R-CNN layout)")
        value = np.asarray(mat[name])
        if name == "images" and value.dtype.kind in "US":  # a char matrix: one id per row
            out[name] = [str(v).strip() for v in value.ravel()]
        elif value.dtype == object:
            out[name] = list(value.ravel(order="F"))
        else:
            raise SppdetError(
                f"{path}: variable {name!r} is a {value.dtype} array, not a cell array "
                "(R-CNN layout: one cell per image)"
            )
    return out


def read_rcnn_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Image id -> float64 [M, 4] 0-based x1 y1 x2 y2, in the file's order, from an R-CNN .mat."""
    path = Path(path)
    if not path.is_file():
        raise SppdetError(f"{path}: proposal file not found; pass --import an R-CNN .mat file")
    cells = read_cell_arrays(path, VARIABLES) if is_hdf5_mat(path) else _read_v5(path)
    ids, boxes = cells["images"], cells["boxes"]
    if len(ids) != len(boxes):
        raise SppdetError(
            f"{path}: 'images' has {len(ids)} entries but 'boxes' has {len(boxes)}; "
            "they must pair up one to one"
        )
    out: dict[str, np.ndarray] = {}
    for raw_id, raw_boxes in zip(ids, boxes, strict=True):
        image_id = raw_id if isinstance(raw_id, str) else _as_text(raw_id)
        if not image_id:
            raise SppdetError(f"{path}: an entry of 'images' is not an image id: {raw_id!r}")
        array = np.asarray(raw_boxes)
        while array.dtype == object and array.size == 1:
            array = np.asarray(array.ravel()[0])
        if array.size == 0:
            array = np.zeros((0, 4))
        if array.ndim != 2 or array.shape[1] != 4 or array.dtype.kind not in "iuf":
            raise SppdetError(
                f"{path}: boxes of image {image_id!r} are not an [M x 4] numeric array "
                f"(shape {array.shape}, type {array.dtype})"
            )
        if image_id in out:
            raise SppdetError(f"{path}: image {image_id!r} appears twice in 'images'")
        out[image_id] = rcnn_to_xyxy(array)
    return out
