"""Bounding-box regression: one ridge regressor per class on pooled conv5 features (SPEC.md).

Samples are windows with IoU > 0.5 to their best-overlapping ground-truth box, which gives the
class and the target. Targets are R-CNN deltas; the released code subtracts their mean and whitens
them (ZCA) before the ridge fit, and undoes both at test time. Features are scaled to mean norm 20
by the caller and get a constant 1 appended here; the ridge penalty covers every weight, as in the
released code's Cholesky solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sppdet.detector.core.boxes import decode_deltas

WHITEN_EPS = 1e-3  # added to the target covariance's eigenvalues, as in the released code


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
    dim = features.shape[1] + 1
    weights = np.zeros((num_classes, dim, 4))
    means = np.zeros((num_classes, 4))
    unwhitens = np.tile(np.eye(4), (num_classes, 1, 1))
    trained = np.zeros(num_classes, bool)
    for k in range(num_classes):  # a loop over classes, each a batched solve
        rows = labels == k
        if not rows.any():
            continue
        mean, whiten, unwhiten = whitening(targets[rows])
        weights[k] = ridge(_with_bias(features[rows]), (targets[rows] - mean) @ whiten, lam)
        means[k], unwhitens[k], trained[k] = mean, unwhiten, True
    return BoxRegressor(weights, means, unwhitens, trained)
