"""Ridge box regression with whitened R-CNN targets."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge

from sppdet.detector.core.boxes import encode_deltas
from sppdet.detector.heads.bbox_reg import fit_box_regressor, ridge, whitening


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
