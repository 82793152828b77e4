"""Reading cell arrays from MATLAB v7.3 .mat files, which are HDF5 files with MATLAB's layout.

MATLAB writes each variable as an HDF5 dataset whose ``MATLAB_class`` attribute names its type.
Arrays are stored transposed (column-major), a cell array is an array of object references into
``#refs#``, a char array holds UTF-16 code units, and an empty array is a placeholder dataset
flagged ``MATLAB_empty``. Older (v5) files are not HDF5: read them with ``scipy.io.loadmat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from sppdet.detector.core.errors import SppdetError

CellItem = str | np.ndarray


def is_hdf5_mat(path: str | Path) -> bool:
    """True for a v7.3 (HDF5) .mat file."""
    return h5py.is_hdf5(str(path))


def _matlab_class(node: h5py.Dataset) -> str:
    value = node.attrs.get("MATLAB_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(node: h5py.Dataset) -> CellItem:
    """One MATLAB value: a char array becomes str (rows joined by newlines), anything else the
    array in MATLAB's shape."""
    if node.attrs.get("MATLAB_empty", 0):
        return "" if _matlab_class(node) == "char" else np.zeros((0,))
    data = np.asarray(node[()]).T  # back to MATLAB's row/column order
    if _matlab_class(node) == "char":
        rows = np.atleast_2d(data)
        return "\n".join("".join(chr(c) for c in row) for row in rows)
    return data


def read_cell_arrays(path: str | Path, names: Sequence[str]) -> dict[str, list[CellItem]]:
    """The cell arrays NAMES of a v7.3 .mat file, each as a list in MATLAB's linear order.

    A char matrix variable (one string per row) is accepted in place of a cell of strings.
    """
    path = Path(path)
    out: dict[str, list[CellItem]] = {}
    try:
        with h5py.File(path, "r") as handle:
            for name in names:
                if name not in handle:
                    raise SppdetError(f"{path}: MATLAB file has no variable {name!r}")
                node = handle[name]
                if not isinstance(node, h5py.Dataset):
                    raise SppdetError(f"{path}: variable {name!r} is a struct, not a cell array")
                kind = _matlab_class(node)
                if kind == "char":
                    text = _decode(node)
                    out[name] = [row.rstrip() for row in str(text).split("\n") if row.strip()]
                elif kind == "cell":
                    refs = np.asarray(node[()]).T.ravel(order="F")
                    out[name] = [_decode(handle[ref]) for ref in refs]
                else:
                    raise SppdetError(
                        f"{path}: variable {name!r} is a MATLAB {kind or 'array'}, not a cell array"
                    )
    except OSError as exc:
        raise SppdetError(f"{path}: unreadable MATLAB v7.3 file ({exc})") from None
    return out
