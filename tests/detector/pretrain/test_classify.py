"""Tests of ``sppdet.detector.pretrain.classify``: top-k accuracy by hand, and the evaluation of
a checkpoint end to end against a direct computation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.pretrain.classifier import load_classifier
from sppdet.detector.pretrain.classify import Accuracy, accuracy, classify_eval, topk_correct
from sppdet.detector.pretrain.samples import BACKGROUND, load_samples
from tests.detector.pretrain.shared import random_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_topk_and_accuracy_by_hand():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.0, 0.05, 0.15],
            [0.3, 0.1, 0.2, 0.25, 0.1, 0.05],
            [0.0, 0.05, 0.1, 0.2, 0.3, 0.4],  # label 0 ranks last
            [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],
        ]
    )
    labels = torch.tensor([1, 4, 0, 0])
    assert topk_correct(scores, labels, 1).tolist() == [True, False, False, True]
    # Row 1: label 4 (0.1) ranks 4th or 5th of 0.3, 0.25, 0.2, 0.1, 0.1, 0.05 -> in the top 5.
    assert topk_correct(scores, labels, 5).tolist() == [True, True, False, True]
    names = ("bg", "a", "b", "c", "d", "e")
    r = accuracy(scores, labels, names)
    assert r.top1 == 0.5 and r.top5 == 0.75 and r.samples == 4
    assert r.per_class_top1 == {"bg": 0.5, "a": 1.0, "d": 0.0}
    assert r.mean_class_top1 == pytest.approx(0.5)
    assert accuracy(scores[:, :5], labels, names[:5]).top5 is None  # five classes: trivial
    # The JSON report holds the fields under their names, in this order.
    assert list(r.to_json()) == ["samples", "top1", "top5", "per_class_top1", "mean_class_top1"]
    assert r.to_json()["per_class_top1"] == {"bg": 0.5, "a": 1.0, "d": 0.0}


def test_accuracy_without_samples_is_undefined():
    r = accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), ("a", "b", "c"))
    assert isinstance(r, Accuracy) and r.samples == 0 and r.per_class_top1 == {}
    assert math.isnan(r.top1) and math.isnan(r.mean_class_top1) and r.top5 is None


def test_classify_eval_on_detection_crops_matches_a_direct_computation(tmp_path):
    shapes = ("circle", "cross", "diamond", "square", "triangle")
    voc = make_synthetic_voc(tmp_path / "voc", 6, seed=4, image_size=(96, 128), classes=shapes)
    ckpt = random_checkpoint(tmp_path / "six.pt", (BACKGROUND, *shapes), True)
    report = classify_eval(ckpt, voc, "test", workers=0, progress=False, device="cpu")
    clf = load_classifier(ckpt)
    samples = load_samples(voc, "test", PretrainConfig(), clf.classes, require_all=False, seed=0)
    assert report.counts == samples.counts() and report.counts[BACKGROUND] > 0
    assert report.to_json()["views"] == {
        "size": 64,
        "full_side": 73,
        "view_scales": [73],
        "multiview_count": 10,
    }
    assert list(report.to_json()) == [
        "checkpoint",
        "data",
        "split",
        "backbone",
        "classes",
        "counts",
        "views",
        "results",
        "seconds",
    ]
    # Centre view by hand: decode, crop the region, take its central 7/8 square, resize to 64.
    hits = []
    for k in range(len(samples)):
        bgr = cv2.imread(str(samples.paths[samples.image[k]]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x1, y1, x2, y2 = samples.regions[k]
        region = rgb[math.floor(y1) : math.ceil(y2) + 1, math.floor(x1) : math.ceil(x2) + 1]
        side = round(0.875 * min(region.shape[:2]))
        y0, x0 = (region.shape[0] - side) // 2, (region.shape[1] - side) // 2
        square = region[y0 : y0 + side, x0 : x0 + side]
        interp = cv2.INTER_AREA if side > 64 else cv2.INTER_LINEAR
        crop = cv2.resize(square, (64, 64), interpolation=interp) if side != 64 else square
        with torch.inference_mode():
            hits.append(int(clf.model(clf.preprocessing(crop))[0].argmax()) == samples.labels[k])
    assert report.results["center"].top1 == pytest.approx(np.mean(hits))
    for view in ("center", "full", "multiview"):
        r = report.results[view]
        assert r.samples == len(samples) and r.top5 is not None and r.top5 >= r.top1
    wider = classify_eval(
        ckpt,
        voc,
        "test",
        views=18,
        full_side=64,
        view_scales=[64, 80],
        workers=0,
        progress=False,
        device="cpu",
    )
    assert wider.views.count == 36 and wider.views.full_side == 64
    assert wider.views.view_scales == (64, 80)
    folder_model = random_checkpoint(tmp_path / "folder.pt", ("circle", "square"), False)
    with pytest.raises(SppdetError, match="trained on an image-folder tree"):
        classify_eval(folder_model, voc, "test", workers=0, progress=False, device="cpu")
