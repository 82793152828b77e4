"""Platt scaling (heads.calibration): the fit against the analytic posterior of two Gaussians,
the maximum-likelihood equations with Platt's targets, and the probabilities' range and order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.calibration import (
    PlattScaling,
    fit_platt,
    fit_platt_per_class,
    platt_targets,
)

# Margins of correct windows ~ N(MU1, SIGMA), of wrong ones ~ N(MU0, SIGMA): with equal variances
# the posterior P(correct | m) is exactly a sigmoid of m, so Platt's model holds and the fit
# must find it up to sampling error.
MU1, MU0, SIGMA = 1.0, -1.0, 0.8
N1, N0 = 40_000, 160_000  # 5 standard errors stay under 1.5% of probability


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_fit_matches_the_analytic_posterior_of_two_gaussians() -> None:
    rng = np.random.default_rng(7)
    margins = np.concatenate([rng.normal(MU1, SIGMA, N1), rng.normal(MU0, SIGMA, N0)])
    correct = np.arange(N1 + N0) < N1
    a, b = fit_platt(margins, correct)
    # The posterior's logit is w m + c (Bayes with the classes' share as prior), and Platt's
    # P = 1 / (1 + exp(a m + b)) is the sigmoid of -(a m + b): a = -w, b = -c.
    w = (MU1 - MU0) / SIGMA**2
    c = (MU0**2 - MU1**2) / (2 * SIGMA**2) + np.log(N1 / N0)
    x = np.stack([margins, np.ones_like(margins)], axis=1)
    p = _sigmoid(x @ [w, c])
    # Sampling error: the MLE's covariance is the inverse Fisher information at the truth,
    # sum p(1-p) x x^T; the error of the fitted logit at m is sqrt([m 1] cov [m 1]^T).
    cov = np.linalg.inv((x * (p * (1 - p))[:, None]).T @ x)
    # Platt's soft targets t instead of the labels y move the estimate by cov @ sum (t - y) x
    # (one Newton step from the truth): a bias, computed rather than bounded.
    shift = cov @ (x.T @ (platt_targets(correct) - correct))
    grid = np.linspace(-2, 2, 41)  # where both groups have margins
    g = np.stack([grid, np.ones_like(grid)], axis=1)
    truth = _sigmoid(g @ [w, c])
    slope = truth * (1 - truth)  # dP/dlogit
    se = slope * np.sqrt(np.einsum("ij,jk,ik->i", g, cov, g))
    tolerance = 5 * se + slope * np.abs(g @ shift) + 1e-9
    fitted = PlattScaling(np.array([a]), np.array([b])).probability(grid, np.zeros(41, int))
    assert np.all(np.abs(fitted - truth) <= tolerance)
    # tight enough to mean something: an offset of 0.1 in b moves P by up to 2.5%
    assert tolerance.max() < 0.015


def test_fit_solves_the_likelihood_equations_with_platts_targets() -> None:
    # Separable margins: with 0/1 labels the slope would run off to infinity; Platt's targets
    # (2+1)/(2+2) and 1/(2+2) keep it finite, and the fit solves the score equations
    # sum (t - p) = 0 and sum (t - p) m = 0 of the soft-target log-likelihood.
    margins = np.array([-2.0, -1.0, 1.0, 2.0])
    correct = np.array([False, False, True, True])
    t = platt_targets(correct)
    np.testing.assert_allclose(t, [0.25, 0.25, 0.75, 0.75])
    a, b = fit_platt(margins, correct)
    assert np.isfinite(a) and a < 0
    p = PlattScaling(np.array([a]), np.array([b])).probability(margins, np.zeros(4, int))
    assert abs(np.sum(t - p)) < 1e-6
    assert abs(np.sum((t - p) * margins)) < 1e-6


def test_probabilities_stay_in_the_unit_interval_and_rise_with_the_margin() -> None:
    scaling = PlattScaling(np.array([-3.0, -0.5]), np.array([1.0, -2.0]))
    margins = np.array([-1e6, -50.0, -1.0, 0.0, 1.0, 50.0, 1e6])
    for k in (0, 1):
        with np.errstate(all="raise"):  # no overflow on huge margins
            p = scaling.probability(margins, np.full(len(margins), k))
        assert np.all((p >= 0) & (p <= 1))
        assert np.all(np.diff(p) >= 0) and p[0] == 0.0 and p[-1] == 1.0
    # class k uses its own (a, b): at m = 0, P = 1 / (1 + exp(b_k))
    p0 = scaling.probability(np.zeros(2), np.array([0, 1]))
    np.testing.assert_allclose(p0, 1 / (1 + np.exp([1.0, -2.0])), rtol=1e-12)


def test_torch_variants_match_numpy_to_float32_precision() -> None:
    scaling = PlattScaling(np.array([-3.0, -0.5]), np.array([1.0, -2.0]))
    margins = np.linspace(-4, 4, 33)
    labels = np.arange(33) % 2
    expected = scaling.probability(margins, labels)
    got = scaling.probability_tensor(torch.tensor(margins), torch.tensor(labels)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)  # float32: 2^-24 relative, a few ops
    matrix = scaling.probability_matrix(torch.tensor(np.stack([margins, margins], axis=1)))
    np.testing.assert_allclose(
        matrix.numpy()[:, 1], scaling.probability(margins, np.ones(33, int)), atol=1e-6
    )


def test_stored_form_round_trips_and_is_read_from_an_svm_model() -> None:
    fitted = fit_platt_per_class(
        [np.array([-2.0, -1.0, 1.0, 2.0]), np.array([-1.0, 0.0, 0.5, 3.0])],
        [np.array([0, 0, 1, 1], bool), np.array([0, 1, 0, 1], bool)],
    )
    stored = fitted.to_dict()
    assert set(stored) == {"a", "b"} and all(isinstance(v, float) for v in stored["a"])
    again = PlattScaling.from_dict({**stored, "held_out_images": 3})  # other keys ignored
    np.testing.assert_array_equal(again.a, fitted.a)
    np.testing.assert_array_equal(again.b, fitted.b)
    assert PlattScaling.of_svm({"weights": None}) is None  # trained before calibration
    assert PlattScaling.of_svm({"calibration": None}) is None  # one training image
    assert len(PlattScaling.of_svm({"calibration": stored})) == 2
    with pytest.raises(SppdetError, match="2 slopes for 1 offsets"):
        PlattScaling.from_dict({"a": [1.0, 2.0], "b": [0.0]})
