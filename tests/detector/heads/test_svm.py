"""Linear SVMs: liblinear's objective with a regularised bias feature, and hard-negative mining."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.svm import LinearSVC

from sppdet.detector.core.config import SvmConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.svm import TrainingImage, feature_scale, fit_linear_svm, train_svms


def _primal_objective(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, cfg: SvmConfig):
    # liblinear -s 3 -B 10: x~ = [x, 10], w~ = [w, b/10]; 0.5|w~|^2 + sum_i C_i hinge_i.
    w_tilde = np.append(w, b / cfg.bias_feature)
    c = np.where(y > 0, cfg.C * cfg.positive_weight, cfg.C)
    margins = y * (x @ w + b)
    return 0.5 * w_tilde @ w_tilde + np.sum(c * np.maximum(0, 1 - margins))


TIGHT = {"tolerance": 1e-6, "max_iterations": 100_000}


def test_fit_matches_an_independent_qp_solution() -> None:
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 1.0, size=(15, 4))
    neg = rng.normal(-1.0, 1.0, size=(30, 4))
    # A C where the hinge terms matter on this tiny problem; a tight tolerance to compare optima.
    cfg = SvmConfig(C=0.5, **TIGHT)
    w, b = fit_linear_svm(pos, neg, cfg)
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(15), -np.ones(30)])
    c = np.where(y > 0, cfg.C * cfg.positive_weight, cfg.C)
    n, d = x.shape
    x_tilde = np.hstack([x, np.full((n, 1), cfg.bias_feature)])

    # Independent solver: the QP with slacks, min 0.5|v|^2 + sum c_i xi_i, y_i v.x~_i >= 1 - xi_i.
    def objective(z: np.ndarray) -> float:
        return 0.5 * z[: d + 1] @ z[: d + 1] + c @ z[d + 1 :]

    constraints = [
        {"type": "ineq", "fun": lambda z: y * (x_tilde @ z[: d + 1]) - 1 + z[d + 1 :]},
        {"type": "ineq", "fun": lambda z: z[d + 1 :]},
    ]
    start = np.concatenate([np.zeros(d + 1), np.ones(n)])
    qp = minimize(objective, start, constraints=constraints, method="SLSQP", tol=1e-10)
    assert qp.success
    ours = _primal_objective(w, b, x, y, cfg)
    assert ours == pytest.approx(qp.fun, rel=2e-3)
    np.testing.assert_allclose(np.append(w, b / cfg.bias_feature), qp.x[: d + 1], atol=2e-2)


def test_solver_stops_where_the_released_liblinear_does() -> None:
    cfg = SvmConfig(C=0.5)
    assert (cfg.tolerance, cfg.max_iterations) == (0.1, 1_000)  # liblinear -s 3's defaults
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, size=(15, 4)), rng.normal(-1.0, 1.0, size=(30, 4))
    svm = LinearSVC(
        C=cfg.C,
        loss="hinge",
        class_weight={1: cfg.positive_weight, 0: 1.0},
        intercept_scaling=cfg.bias_feature,
        tol=0.1,
        max_iter=1_000,
        random_state=cfg.seed,
    ).fit(np.concatenate([pos, neg]), np.repeat([1, 0], [15, 30]))
    w, b = fit_linear_svm(pos, neg, cfg)
    np.testing.assert_array_equal(w, svm.coef_[0].astype(np.float32))
    assert b == svm.intercept_[0]
    # The setting is used: the tight solution of the same problem differs.
    tight, _ = fit_linear_svm(pos, neg, dataclasses.replace(cfg, **TIGHT))
    assert np.abs(tight - w).max() > 1e-3


def _image(rng: np.random.Generator, n_neg: int, dim: int, shift: float = -1.5) -> TrainingImage:
    features = rng.normal(shift, 1.0, size=(n_neg, dim)).astype(np.float32)
    return TrainingImage(features=features, negatives=np.ones((1, n_neg), bool))


def test_mining_retrains_every_n_new_hard_negatives_and_evicts_easy_ones() -> None:
    rng = np.random.default_rng(1)
    dim = 8
    positives = [rng.normal(1.5, 1.0, size=(40, dim)).astype(np.float32)]
    images = [_image(rng, 60, dim) for _ in range(10)]
    cfg = SvmConfig(C=1.0, retrain_every=100)
    scorer, stats = train_svms(positives, images, cfg)
    # The untrained model scores everything 0 > -1.0001: images 1-2 give 120 > 100 new hard
    # negatives, so there is at least that retrain plus the final one.
    assert stats[0]["retrains"] >= 2
    final_cache = stats[0]["cache_history"][-1]
    assert final_cache == stats[0]["cached_negatives"] <= 600
    # The model separates fresh samples of both distributions.
    assert (scorer.score(rng.normal(1.5, 1.0, size=(200, dim)))[:, 0] > 0).mean() > 0.9
    assert (scorer.score(rng.normal(-1.5, 1.0, size=(200, dim)))[:, 0] < 0).mean() > 0.9


def test_cache_after_retrain_holds_no_negative_below_eviction_threshold() -> None:
    rng = np.random.default_rng(2)
    dim = 6
    positives = [rng.normal(2.0, 1.0, size=(30, dim)).astype(np.float32)]
    images = [_image(rng, 50, dim, shift=-0.5) for _ in range(6)]
    cfg = SvmConfig(C=1.0, retrain_every=10_000)  # only the final retrain
    kept: list[list[int]] = []
    scorer, stats = train_svms(positives, images, cfg, on_image=kept.append)
    assert [k[0] for k in kept] == [50 * (i + 1) for i in range(6)]  # all hard while w = 0
    assert stats[0]["retrains"] == 1
    everything = np.concatenate([im.features for im in images])
    survivors = (scorer.score(everything)[:, 0] >= cfg.evict_threshold).sum()
    assert stats[0]["cached_negatives"] == survivors


def test_negative_cap_bounds_memory() -> None:
    rng = np.random.default_rng(3)
    positives = [rng.normal(1.0, 1.0, size=(10, 4)).astype(np.float32)]
    images = [_image(rng, 40, 4) for _ in range(5)]
    sizes: list[list[int]] = []
    cfg = dataclasses.replace(SvmConfig(), max_cached_negatives=70, retrain_every=10_000)
    train_svms(positives, images, cfg, on_image=sizes.append)
    assert max(s[0] for s in sizes) <= 70


def test_class_without_positives_is_a_clear_error() -> None:
    positives = [np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32)]
    with pytest.raises(SppdetError, match="class 'cat' has no ground-truth boxes"):
        train_svms(positives, [], SvmConfig(), class_names=["dog", "cat"])


def test_feature_scale_gives_target_mean_norm() -> None:
    sample = np.array([[3.0, 4.0], [0.0, 10.0]])  # norms 5 and 10, mean 7.5
    assert feature_scale(sample, 20.0) == pytest.approx(20 / 7.5)
