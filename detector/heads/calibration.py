"""Platt scaling: each class's SVM margin turned into a probability a user can threshold.

P(correct | margin m) = 1 / (1 + exp(a * m + b)), one (a, b) per class (Platt 1999). The fit is
a logistic regression on the 1-D margin (scikit-learn, no regularisation) with Platt's targets:
a correct window counts as (N+ + 1) / (N+ + 2) positive, a wrong one as 1 / (N- + 2), instead
of 1 and 0. These are the posterior means of the label under a uniform prior, they keep the fit
finite when the margins separate the two groups perfectly (a tiny held-out set, an easy class),
and with thousands of windows they move the probabilities by less than 1 / N.

What the margins come from, and why they are held out, is the train-svm stage's business
(``sppdet.detector.training.svm``): windows an SVM was trained on sit beyond its margin, so
fitting on them would make every probability too confident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from sppdet.detector.core.errors import SppdetError

# lbfgs on one feature converges in tens of iterations; the cap only guards against a stall.
PLATT_MAX_ITER = 1_000
PLATT_TOL = 1e-10  # the 1-D problem is cheap: solve it well below the probabilities' precision
CALIBRATION_KEY = "calibration"  # the svm model's entry: {"a": [K], "b": [K], ...} or None


@dataclass(frozen=True)
class PlattScaling:
    """Per-class sigmoids of the margin: P = 1 / (1 + exp(a[k] * m + b[k])) for class k."""

    a: np.ndarray  # [K] float64, negative when a larger margin means more likely correct
    b: np.ndarray  # [K] float64

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PlattScaling:
        """The calibration stored with an svm model ({"a": [K], "b": [K]}, other keys ignored)."""
        a = np.asarray(values["a"], np.float64).reshape(-1)
        b = np.asarray(values["b"], np.float64).reshape(-1)
        if a.shape != b.shape:
            raise SppdetError(
                f"calibration: {len(a)} slopes for {len(b)} offsets ; rerun `sppdet train-svm`"
            )
        return cls(a, b)

    @classmethod
    def of_svm(cls, model: Mapping[str, Any]) -> PlattScaling | None:
        """The calibration an svm MODEL stores; None for SVMs trained before calibration existed
        (``train-svm`` adds it) or on a single training image."""
        values = model.get(CALIBRATION_KEY)
        return None if values is None else cls.from_dict(values)

    def to_dict(self) -> dict[str, list[float]]:
        return {"a": [float(v) for v in self.a], "b": [float(v) for v in self.b]}

    def __len__(self) -> int:
        return len(self.a)

    def probability(self, margins: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Probabilities [N] (float64) of MARGINS [N] of the classes LABELS [N]."""
        m = np.asarray(margins, np.float64)
        k = np.asarray(labels, np.int64)
        # 1 / (1 + exp(z)) written through tanh: no overflow warning for large |z|.
        return 0.5 * (1.0 - np.tanh(0.5 * (self.a[k] * m + self.b[k])))

    def probability_tensor(self, margins: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``probability`` on MARGINS' device, in float32 (margins [N], labels [N] int64)."""
        a = torch.as_tensor(self.a, dtype=torch.float32, device=margins.device)
        b = torch.as_tensor(self.b, dtype=torch.float32, device=margins.device)
        return torch.sigmoid(-(a[labels] * margins.float() + b[labels]))

    def probability_matrix(self, margins: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, K] of a margin matrix [N, K] (column k: class k), on its device."""
        a = torch.as_tensor(self.a, dtype=torch.float32, device=margins.device)
        b = torch.as_tensor(self.b, dtype=torch.float32, device=margins.device)
        return torch.sigmoid(-(margins.float() * a + b))


def platt_targets(is_correct: np.ndarray) -> np.ndarray:
    """Platt's soft targets: (N+ + 1) / (N+ + 2) for the correct, 1 / (N- + 2) for the rest."""
    correct = np.asarray(is_correct, bool)
    positives = int(correct.sum())
    negatives = len(correct) - positives
    return np.where(correct, (positives + 1) / (positives + 2), 1.0 / (negatives + 2))


def fit_platt(margins: np.ndarray, is_correct: np.ndarray) -> tuple[float, float]:
    """(a, b) of the sigmoid 1 / (1 + exp(a * m + b)) that best predicts IS_CORRECT [N] from
    MARGINS [N], by maximum likelihood with Platt's targets.

    A soft target t enters scikit-learn's logistic regression as the window twice: labelled 1
    with weight t and 0 with weight 1 - t, whose log-likelihood is exactly t log p + (1-t) log(1-p).
    """
    m = np.asarray(margins, np.float64).reshape(-1)
    if len(m) == 0:
        raise SppdetError("calibration: no held-out windows to fit on")
    t = platt_targets(is_correct)
    x = np.concatenate([m, m])[:, None]
    y = np.concatenate([np.ones(len(m)), np.zeros(len(m))])
    # C = inf: no regularisation (scikit-learn >= 1.8 deprecates penalty=None for it).
    model = LogisticRegression(C=np.inf, tol=PLATT_TOL, max_iter=PLATT_MAX_ITER)
    model.fit(x, y, sample_weight=np.concatenate([t, 1.0 - t]))
    return -float(model.coef_[0, 0]), -float(model.intercept_[0])


def fit_platt_per_class(
    margins: Sequence[np.ndarray], is_correct: Sequence[np.ndarray]
) -> PlattScaling:
    """One ``fit_platt`` per class k on MARGINS[k], IS_CORRECT[k]."""
    fits = [fit_platt(m, c) for m, c in zip(margins, is_correct, strict=True)]
    return PlattScaling(np.array([a for a, _ in fits]), np.array([b for _, b in fits]))
