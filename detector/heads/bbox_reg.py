"""Bounding-box regression: one ridge regressor per class on pooled conv5 features (SPEC.md).

Samples are windows with IoU > 0.5 to their best-overlapping ground-truth box, which gives the
class and the target. Targets are R-CNN deltas; the released code subtracts their mean and whitens
them (ZCA) before the ridge fit, and undoes both at test time. Features are scaled to mean norm 20
(the factor comes from the caller) and get a constant 1 appended here; the ridge penalty covers
every weight, as in the released code's Cholesky solve.

``NormalEquations`` takes the samples image by image and keeps memory bounded whatever their
number: a class keeps its rows (float32) until it has more than D + 1 of them, and is solved
from them (the dual system, N x N, is the smaller one); past that, its rows are folded into its
XᵀX and XᵀY (float64, (D + 1)² + 4 (D + 1) numbers), ``block`` rows at a time. The targets' mean
and whitening act on XᵀY after the fact, (XᵀY - Xᵀ1 μᵀ) T, so the solution is the one of the
stacked samples, up to float64 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, cho_factor, cho_solve

from sppdet.detector.core.boxes import decode_deltas

WHITEN_EPS = 1e-3  # added to the target covariance's eigenvalues, as in the released code
# Rows of a class buffered before they are folded into its XᵀX: one BLAS-sized product per block
# (at ZF-5's 12,800-d pool5, 105 MB of float32 rows beside the 1.3 GB float64 XᵀX).
GRAM_BLOCK_ROWS = 2048


@dataclass
class BoxRegressor:
    """Per-class linear maps from [features, 1] to whitened deltas, and the un-whitening."""

    weights: np.ndarray  # [K, D + 1, 4]
    target_mean: np.ndarray  # [K, 4]
    unwhiten: np.ndarray  # [K, 4, 4]
    trained: np.ndarray  # [K] bool: classes that had samples

    def deltas(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Predicted deltas [N, 4] for windows with scaled FEATURES [N, D] of classes LABELS [N]."""
        x = _with_bias(features)
        whitened = np.einsum("nd,ndj->nj", x, self.weights[labels])
        out = np.einsum("nj,njk->nk", whitened, self.unwhiten[labels]) + self.target_mean[labels]
        return np.where(self.trained[labels, None], out, 0.0)

    def apply(self, boxes: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return decode_deltas(boxes, self.deltas(features, labels))


def _with_bias(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_W |XW - Y|^2 + lam |W|^2, in the primal or the dual, whichever system is smaller."""
    n, d = x.shape
    if n >= d:
        return np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
    return x.T @ np.linalg.solve(x @ x.T + lam * np.eye(n), y)


def whitening(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, whitening and un-whitening matrices of TARGETS [N, 4] (ZCA, eigenvalues + eps)."""
    mean = targets.mean(axis=0)
    centred = targets - mean
    cov = centred.T @ centred / max(len(targets), 1)
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0, None) + WHITEN_EPS
    whiten = vectors @ np.diag(1 / np.sqrt(values)) @ vectors.T
    unwhiten = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    return mean, whiten, unwhiten


def fit_box_regressor(
    features: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    lam: float,
) -> BoxRegressor:
    """Fit one ridge per class on scaled FEATURES [N, D], delta TARGETS [N, 4], LABELS [N]."""
    systems = NormalEquations(num_classes, features.shape[1])
    systems.add(features, targets, labels)
    return systems.fit(lam)


class NormalEquations:
    """Per class, the ridge system of the samples added so far, in bounded memory (see the
    module's docstring). Features are multiplied by SCALE (in float64) as they are added."""

    def __init__(
        self, num_classes: int, dim: int, scale: float = 1.0, block: int = GRAM_BLOCK_ROWS
    ) -> None:
        self.dim, self.scale, self.block = dim, scale, block
        self._rows: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._targets: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._gram: list[np.ndarray | None] = [None] * num_classes  # XᵀX [D + 1, D + 1]
        self._xty: list[np.ndarray | None] = [None] * num_classes  # XᵀY [D + 1, 4], raw targets
        self.counts = np.zeros(num_classes, np.int64)

    def held_rows(self, k: int) -> int:
        """Rows of class K held as rows (not folded into its XᵀX)."""
        return sum(len(r) for r in self._rows[k])

    def add(self, features: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> None:
        """Samples: FEATURES [N, D] (unscaled), delta TARGETS [N, 4], class LABELS [N]."""
        for k in np.unique(labels):
            rows = labels == k
            self._rows[k].append(features[rows])  # as given: the pipeline's are float32
            self._targets[k].append(np.asarray(targets[rows], np.float64))
            self.counts[k] += int(rows.sum())
            # Up to D + 1 rows (half the bytes of XᵀX) a class stays rows: the dual system
            # (N x N) is then the smaller one; past that, XᵀX, fed a block at a time.
            if self.held_rows(k) >= (self.dim + 1 if self._gram[k] is None else self.block):
                self._fold(k)

    def fit(self, lam: float) -> BoxRegressor:
        """The ridge regressors (penalty LAM) of every class with samples. Call it once: the
        solves run in place, in the memory of XᵀX."""
        num_classes = len(self.counts)
        weights = np.zeros((num_classes, self.dim + 1, 4))
        means = np.zeros((num_classes, 4))
        unwhitens = np.tile(np.eye(4), (num_classes, 1, 1))
        for k in np.nonzero(self.counts)[0]:  # a loop over classes, each a batched solve
            targets = np.concatenate(self._targets[k])
            means[k], whiten, unwhitens[k] = whitening(targets)
            if self._gram[k] is None:  # at most D + 1 rows: solve from the rows
                x = self._scaled(np.concatenate(self._rows[k]))
                weights[k] = ridge(x, (targets - means[k]) @ whiten, lam)
                continue
            self._fold(k)
            gram, xty = self._gram[k], self._xty[k]
            ones = gram[:, -1]  # Xᵀ1: the bias feature is the last column (upper triangle)
            rhs = (xty - np.outer(ones, means[k])) @ whiten
            # Cholesky, as the released code, on the upper triangle, in place: no second XᵀX
            gram[np.diag_indices_from(gram)] += lam
            weights[k] = cho_solve(cho_factor(gram, overwrite_a=True, check_finite=False), rhs)
            self._gram[k] = self._xty[k] = None  # consumed
        return BoxRegressor(weights, means, unwhitens, self.counts > 0)

    def _scaled(self, rows: np.ndarray) -> np.ndarray:
        return _with_bias(np.asarray(rows, np.float64) * self.scale)

    def _fold(self, k: int) -> None:
        """Add class K's buffered rows to its XᵀX and XᵀY (allocated at the first fold)."""
        if not self._rows[k]:
            return
        x = self._scaled(np.concatenate(self._rows[k]))
        # The targets stay whole (4 numbers a sample) for the mean and the whitening; only
        # those of the rows folded now enter XᵀY.
        y = np.concatenate(self._targets[k])[-len(x) :]
        if self._gram[k] is None:
            self._gram[k] = np.zeros((self.dim + 1, self.dim + 1), order="F")
            self._xty[k] = np.zeros((self.dim + 1, 4))
        # XᵀX += xᵀx into the upper triangle, in place (XᵀX is Fortran-ordered, and so is xᵀ:
        # no copies): half the products of a full matmul and no temporary of XᵀX's size
        self._gram[k] = blas.dsyrk(1.0, x.T, beta=1.0, c=self._gram[k], overwrite_c=1)
        self._xty[k] += x.T @ y
        self._rows[k] = []
