"""Ridge box regression with whitened R-CNN targets."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge

from sppdet.detector.core.boxes import encode_deltas
from sppdet.detector.heads.bbox_reg import (
    WHITEN_EPS,
    NormalEquations,
    fit_box_regressor,
    ridge,
    whitening,
)


def test_ridge_primal_and_dual_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((50, 8), (8, 50)):  # primal branch, then dual branch
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 4))
        expected = Ridge(alpha=3.0, fit_intercept=False, solver="cholesky").fit(x, y).coef_.T
        np.testing.assert_allclose(ridge(x, y, 3.0), expected, atol=1e-8)


def test_whitening_gives_identity_covariance_and_inverts() -> None:
    rng = np.random.default_rng(1)
    targets = rng.normal(size=(500, 4)) @ np.array(
        [[0.1, 0, 0, 0], [0.05, 0.2, 0, 0], [0, 0, 0.3, 0], [0, 0.1, 0.1, 0.4]]
    ) + np.array([0.01, -0.02, 0.1, 0.05])
    mean, whiten, unwhiten = whitening(targets)
    white = (targets - mean) @ whiten
    cov = white.T @ white / len(white)
    # Identity up to the eps added to the eigenvalues (eigenvalue v becomes v / (v + 1e-3)).
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=0.1)
    np.testing.assert_allclose(whiten @ unwhiten, np.eye(4), atol=1e-10)


def test_regressor_recovers_a_linear_relation_per_class() -> None:
    rng = np.random.default_rng(2)
    n, d = 400, 6
    features = rng.normal(size=(n, d))
    labels = rng.integers(0, 2, size=n)
    true_maps = rng.normal(scale=0.05, size=(2, d, 4))
    targets = np.einsum("nd,ndj->nj", features, true_maps[labels]) + 0.02
    model = fit_box_regressor(features, targets, labels, num_classes=3, lam=1e-3)
    np.testing.assert_allclose(model.deltas(features, labels), targets, atol=1e-4)
    # Class 2 had no samples: zero deltas, boxes unchanged.
    boxes = np.array([[10.0, 10.0, 50.0, 30.0]])
    np.testing.assert_allclose(model.apply(boxes, features[:1], np.array([2])), boxes)


def test_apply_moves_boxes_toward_their_targets() -> None:
    rng = np.random.default_rng(3)
    gt = np.array([20.0, 20.0, 80.0, 60.0])
    jitter = rng.normal(scale=4.0, size=(300, 4))
    proposals = gt + jitter
    targets = encode_deltas(proposals, np.tile(gt, (300, 1)))
    features = jitter  # the ideal feature: the offset itself
    model = fit_box_regressor(features, targets, np.zeros(300, int), num_classes=1, lam=1.0)
    moved = model.apply(proposals, features, np.zeros(300, int))
    assert np.abs(moved - gt).mean() < 0.3 * np.abs(proposals - gt).mean()


def _stacked_ridge(x: np.ndarray, targets: np.ndarray, lam: float) -> tuple[np.ndarray, ...]:
    """The released fit on stacked samples X [N, D] (scaled, float64), written out with numpy:
    centre and whiten the targets (eigenvalues + 1e-3), append the bias 1, solve the normal
    equations. Returns (weights [D + 1, 4], mean, the system's matrix)."""
    mean = targets.mean(axis=0)
    centred = targets - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    whiten = vectors @ np.diag((values + WHITEN_EPS) ** -0.5) @ vectors.T
    xb = np.hstack([x, np.ones((len(x), 1))])
    a = xb.T @ xb + lam * np.eye(xb.shape[1])
    return np.linalg.solve(a, xb.T @ (centred @ whiten)), mean, a


def test_normal_equations_equal_the_stacked_solve() -> None:
    rng = np.random.default_rng(4)
    dim, scale, lam, block = 6, 0.7, 1.0, 16
    systems = NormalEquations(3, dim, scale, block)
    parts = []
    for _ in range(30):  # images of uneven sample counts, float32 features >= 0 like pool5
        n = int(rng.integers(0, 9))
        feats = rng.uniform(0, 1, (n, dim)).astype(np.float32)
        labels = rng.choice(3, n, p=[0.75, 0.2, 0.05])
        targets = rng.normal(0, 0.2, (n, 4)) + [0.05, -0.02, 0.1, 0.0]
        systems.add(feats, targets, labels)
        parts.append((feats, targets, labels))
        # memory stays bounded: at most D + 1 rows, or a block beside XᵀX
        assert all(systems.held_rows(k) < max(block, dim + 1) for k in range(3))
    feats, targets, labels = (np.concatenate(p) for p in zip(*parts, strict=True))
    counts = np.bincount(labels, minlength=3)
    assert counts[0] > 4 * block and counts[2] <= dim  # folded into XᵀX; solved from its rows
    model = systems.fit(lam)
    eps = np.finfo(np.float64).eps
    for k in range(3):
        rows = labels == k
        want, mean, a = _stacked_ridge(feats[rows].astype(np.float64) * scale, targets[rows], lam)
        # Summation order changes the system by ~n eps relatively (positive features: no
        # cancellation in XᵀX), the solve adds ~d eps; the condition number amplifies both.
        tol = 4 * np.linalg.cond(a) * (rows.sum() + dim) * eps * np.abs(want).max()
        np.testing.assert_allclose(model.weights[k], want, rtol=0, atol=tol)
        np.testing.assert_allclose(model.target_mean[k], mean, rtol=0, atol=8 * eps)
    assert model.trained.all() and systems.counts.tolist() == counts.tolist()
