"""detect's scorers: the fine-tuned net's softmax against an independent computation, its own
results folder and fingerprint, and the probability threshold of a split's results files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    SOFTMAX_SCORE_THRESHOLD,
    DetectConfig,
    FinetuneConfig,
    SvmConfig,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.scorer import image_candidates, load_window_scorer
from sppdet.detector.detection.stage import CANDIDATES_KIND, run_detect
from sppdet.detector.evaluation.results import read_voc_results
from sppdet.detector.heads.calibration import CALIBRATION_KEY, PlattScaling
from sppdet.detector.training.finetune import run_finetune
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES, make_split

FINETUNE = FinetuneConfig(
    iterations=6, lr_steps=(4,), batch_size=16, fc_dim=32, checkpoint_every=3, log_every=3,
    images_per_round=2,
)  # fmt: skip
SVM = SvmConfig(layer="pool5", norm_sample_windows=500, retrain_every=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    data, work = make_split(tmp_path_factory.mktemp("scorers"))
    inputs = open_split(work, data, "trainval", CLASSES)
    run_finetune(work, inputs, FINETUNE)
    run_train_svm(work, inputs, SVM, finetuned=False)
    return data, work


def test_softmax_scores_are_the_fine_tuned_nets_class_probabilities(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    scorer = load_window_scorer(work, inputs, DetectConfig(), bbox=False, scoring="softmax")
    image_id = inputs.dataset.records[0].image_id
    boxes = inputs.proposals(image_id)
    pooled = inputs.cache.pooled(image_id, boxes)
    got = scorer.scores(pooled).numpy()
    # fc6, fc7 (ReLU), fc8 and the softmax in float64 from the saved weights; the background
    # (output 0) dropped.
    head = {k: v.double().numpy() for k, v in work.load_model("finetune", "x")["head"].items()}
    x = pooled.double().numpy() * head["input_scale"]
    x = np.maximum(x @ head["fc6.weight"].T + head["fc6.bias"], 0)
    x = np.maximum(x @ head["fc7.weight"].T + head["fc7.bias"], 0)
    z = x @ head["fc8.weight"].T + head["fc8.bias"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert got.shape == (len(boxes), len(CLASSES))
    # float32 sums over 12,800 pool5 inputs: relative errors near 1e-6; probabilities below 1.
    np.testing.assert_allclose(got, p[:, 1:], atol=1e-5)
    cands = image_candidates(inputs, scorer, image_id)
    assert len(cands) == int((p[:, 1:] > SOFTMAX_SCORE_THRESHOLD).sum())
    assert np.array_equal(scorer.probabilities(cands.scores, cands.labels), cands.scores)


def test_softmax_results_have_their_own_folder_and_fingerprint(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    svm = run_detect(work, inputs, DetectConfig(), bbox=False)
    softmax = run_detect(work, inputs, DetectConfig(), bbox=False, scoring="softmax")
    assert svm.out == work.detections("test")
    assert softmax.out == work.detections("test-softmax")
    stores = {
        name: ShardedStore.open(work.detections(name) / "candidates", CANDIDATES_KIND, "x")
        for name in ("test", "test-softmax")
    }
    params = {name: store.meta.params for name, store in stores.items()}
    for store in stores.values():
        store.close()
    assert "scorer" not in params["test"]  # as before scorers existed: old candidates stay
    finetuned = work.load_model("finetune", "x")["fingerprint"]
    assert params["test-softmax"]["scorer"] == "softmax"
    assert params["test-softmax"]["finetune"] == finetuned
    assert params["test-softmax"]["softmax_threshold"] == SOFTMAX_SCORE_THRESHOLD
    # Each run is recorded apart; neither refuses the other's store on a rerun.
    assert Path(work.recorded("detect", "test")["out"]).name == "test"
    assert Path(work.recorded("detect", "test-softmax")["out"]).name == "test-softmax"
    run_detect(work, inputs, DetectConfig(), bbox=False)
    with pytest.raises(SppdetError, match="--scorer 'probit': choose one of svm, softmax"):
        run_detect(work, inputs, DetectConfig(), bbox=False, scoring="probit")


def _probable(
    results: Path, platt: PlattScaling, threshold: float
) -> tuple[set[tuple[str, str, float]], set[tuple[str, str, float]]]:
    """(every detection, those whose probability is at least THRESHOLD) of a results folder."""
    found = read_voc_results(results, "test", CLASSES).detections
    every, probable = set(), set()
    for k, name in enumerate(CLASSES):
        p = platt.probability(found[name].scores, np.full(len(found[name]), k))
        ids, scores = found[name].image_ids, found[name].scores
        for image_id, score, ok in zip(ids, scores, p >= threshold, strict=True):
            every.add((name, str(image_id), float(score)))
            if ok:
                probable.add((name, str(image_id), float(score)))
    return every, probable


def test_a_probability_threshold_keeps_the_probable_detections_of_a_split(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    model = work.load_model("svm", "x")
    platt = PlattScaling.of_svm(model)
    every = run_detect(work, inputs, DetectConfig(), False, work.root / "every")
    # The threshold at the median probability of what was found: some kept, some not.
    found, _ = _probable(every.out, platt, 0.0)
    probabilities = [
        platt.probability(np.array([s]), np.array([CLASSES.index(n)]))[0] for n, _, s in found
    ]
    threshold = float(np.median(probabilities))
    kept = run_detect(
        work, inputs, DetectConfig(), False, work.root / "kept", min_probability=threshold
    )
    written, probable = _probable(kept.out, platt, threshold)
    assert written == probable and 0 < len(written) < len(found)
    # Per class, the split's cap keeps the best margins: probable ones it wrote unthresholded are
    # written thresholded too.
    assert _probable(every.out, platt, threshold)[1] <= written
    # SVMs trained before calibration existed: a threshold needs a probability.
    work.save_model("svm", {k: v for k, v in model.items() if k != CALIBRATION_KEY})
    try:
        with pytest.raises(SppdetError, match=r"svm\.pt: SVMs without a calibration .* train-svm"):
            run_detect(work, inputs, DetectConfig(), False, work.root / "x", min_probability=0.5)
    finally:
        work.save_model("svm", model)
    assert torch.equal(work.load_model("svm", "x")["weights"], model["weights"])
