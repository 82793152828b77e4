"""Reference pooling and random windows shared by the SPP and feature tests."""

from __future__ import annotations

import math

import numpy as np

NOT_BUILT = "the compiled pooler is not built (installed without a C compiler)"


def reference_spp(conv: np.ndarray, cells: np.ndarray, pyramid) -> np.ndarray:
    """Direct transcription of SPEC.md: loops over windows, levels and bins."""
    rows = []
    for x1, y1, x2, y2 in cells:
        h, w = y2 - y1 + 1, x2 - x1 + 1
        parts = []
        for n in pyramid:
            level = np.empty((conv.shape[0], n, n), conv.dtype)
            for i in range(n):
                ys, ye = y1 + (i * h) // n, y1 + math.ceil((i + 1) * h / n)
                for j in range(n):
                    xs, xe = x1 + (j * w) // n, x1 + math.ceil((j + 1) * w / n)
                    level[:, i, j] = conv[:, ys:ye, xs:xe].max(axis=(1, 2))
            parts.append(level.reshape(-1))  # channel-major: c*n*n + y*n + x
        rows.append(np.concatenate(parts))
    return np.stack(rows)


def random_cells(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    x = np.sort(rng.integers(0, width, (n, 2)), 1)
    y = np.sort(rng.integers(0, height, (n, 2)), 1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)
