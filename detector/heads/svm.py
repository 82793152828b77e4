"""Per-class linear SVMs with hard-negative mining (R-CNN / SPP-net released code, SPEC.md).

One pass over the training images. For every image the caller supplies the window features and,
per class, which windows are negatives (IoU < 0.3 with every box of the class). A negative is hard
when the current model scores it above ``hard_threshold`` (-1.0001). When a class has gathered more
than ``retrain_every`` new hard negatives it is retrained (and once more at the end); after each
retrain, cached negatives scoring below ``evict_threshold`` (-1.2) are evicted. The solver is
liblinear's L2-regularised L1-loss dual SVM through scikit-learn's LinearSVC, with C = 0.001,
positive weight 2 and a regularised bias feature of value 10 (``intercept_scaling``), stopping
at liblinear's own default tolerance for this solver (0.1) or after 1,000 iterations, as the
released code does (``SvmConfig.tolerance``, ``max_iterations``; scikit-learn's default is 1e-4).

Memory stays bounded: each class caches at most ``max_cached_negatives`` negatives (float16); over
the cap, the easiest ones (lowest score) go first.

Scoring an image's windows runs where its features are (a torch tensor on the GPU, or on the
CPU): only the mask of hard negatives and their features come back to the host, where the
caches and the solver live.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from sppdet.detector.core.config import SvmConfig
from sppdet.detector.core.errors import SppdetError


@dataclass
class LinearScorer:
    """Scores = features · weights.T + bias, one column per class."""

    weights: np.ndarray  # [K, D] float32
    bias: np.ndarray  # [K] float32

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.weights.T + self.bias

    def score_tensor(self, features: torch.Tensor) -> torch.Tensor:
        """Scores [N, K] of FEATURES [N, D], computed on their device in float32."""
        weights = torch.as_tensor(self.weights).to(features.device)
        bias = torch.as_tensor(self.bias).to(features.device)
        return features.float() @ weights.T + bias


@dataclass
class TrainingImage:
    """What hard-negative mining needs from one image, for all classes at once.

    ``features`` [N, D] are already scaled (mean norm 20), a tensor on the device that scores
    them (or a numpy array: the CPU); ``negatives`` [K, N] marks the windows that may serve as
    negatives of each class. The pass visits each image once, so a window can never enter a
    cache twice.
    """

    features: torch.Tensor | np.ndarray
    negatives: np.ndarray


@dataclass
class _NegativeCache:
    features: np.ndarray
    new_since_retrain: int = 0
    retrains: int = 0
    history: list[int] = field(default_factory=list)


def fit_linear_svm(
    positives: np.ndarray, negatives: np.ndarray, cfg: SvmConfig
) -> tuple[np.ndarray, float]:
    """liblinear -s 3 -c C -w1 pos_weight -B bias_feature -e tolerance on float features, at
    most ``max_iterations`` passes; returns (w, b)."""
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    svm = LinearSVC(
        C=cfg.C,
        loss="hinge",
        dual=True,
        class_weight={1: cfg.positive_weight, 0: 1.0},
        fit_intercept=True,
        intercept_scaling=cfg.bias_feature,
        max_iter=cfg.max_iterations,
        tol=cfg.tolerance,
        random_state=cfg.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def train_svms(
    positives: list[np.ndarray],
    images: Iterable[TrainingImage],
    cfg: SvmConfig,
    on_image: Callable[[list[int]], None] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[LinearScorer, list[dict[str, object]]]:
    """Train one SVM per class; POSITIVES[k] holds class k's scaled positive features [P_k, D].

    Returns the scorer and per-class statistics (retrains, cached negatives at the end).
    ON_IMAGE, if given, is called with the list of per-class cache sizes after every image.
    """
    num_classes = len(positives)
    for k, pos in enumerate(positives):
        if len(pos) == 0:
            name = class_names[k] if class_names else str(k)
            raise SppdetError(f"class {name!r} has no ground-truth boxes in the training split")
    dim = positives[0].shape[1]
    weights = np.zeros((num_classes, dim), np.float32)
    bias = np.zeros(num_classes, np.float32)
    caches = [_NegativeCache(np.zeros((0, dim), np.float16)) for _ in range(num_classes)]

    def retrain(k: int) -> None:
        cache = caches[k]
        if len(cache.features) == 0:
            return
        weights[k], bias[k] = fit_linear_svm(positives[k], cache.features.astype(np.float32), cfg)
        keep = cache.features.astype(np.float32) @ weights[k] + bias[k] >= cfg.evict_threshold
        cache.features = cache.features[keep]
        cache.new_since_retrain = 0
        cache.retrains += 1
        cache.history.append(int(keep.sum()))

    scorer = LinearScorer(weights, bias)  # shares their memory: sees every retrain
    for image in images:
        hard_any, hard, features = _hard_negatives(image, scorer, cfg.hard_threshold)
        for k, cache in enumerate(caches):
            if not hard[k].any():
                continue
            new = features[hard[k][hard_any]]
            cache.features = np.concatenate([cache.features, new])
            cache.new_since_retrain += int(hard[k].sum())
            if len(cache.features) > cfg.max_cached_negatives:
                _keep_hardest(cache, weights[k], bias[k], cfg.max_cached_negatives)
            if cache.new_since_retrain > cfg.retrain_every:
                retrain(k)
        if on_image is not None:
            on_image([len(c.features) for c in caches])
    for k in range(num_classes):
        if caches[k].new_since_retrain > 0 or caches[k].retrains == 0:
            retrain(k)
    stats = [
        {"retrains": c.retrains, "cached_negatives": len(c.features), "cache_history": c.history}
        for c in caches
    ]
    return LinearScorer(weights, bias), stats


def _hard_negatives(
    image: TrainingImage, scorer: LinearScorer, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hard negatives of one image under the current SCORER, scored where the features are:
    (windows hard for some class [N], hard per class [K, N], those windows' features in float16
    on the host [H, D]), with one transfer from the device for the mask and one for the rows."""
    x = torch.as_tensor(image.features)
    negatives = torch.as_tensor(image.negatives).to(x.device)
    hard = negatives & (scorer.score_tensor(x) > threshold).T  # [K, N]
    hard_any = hard.any(dim=0)
    features = x[hard_any].to(torch.float16).cpu().numpy()
    return hard_any.cpu().numpy(), hard.cpu().numpy(), features


def _keep_hardest(cache: _NegativeCache, w: np.ndarray, b: float, cap: int) -> None:
    scores = cache.features.astype(np.float32) @ w + b
    # Stable order on ties: with an untrained model (all scores 0) the earliest negatives stay.
    order = np.argsort(-scores, kind="stable")[:cap]
    order.sort()
    cache.features = cache.features[order]


def feature_scale(sample: np.ndarray, target_norm: float) -> float:
    """The factor that brings the mean L2 norm of SAMPLE's rows to TARGET_NORM."""
    mean_norm = float(np.linalg.norm(np.asarray(sample, np.float64), axis=1).mean())
    if not np.isfinite(mean_norm) or mean_norm <= 0:
        raise SppdetError("features have zero norm; the backbone produced all-zero activations")
    return target_norm / mean_norm
