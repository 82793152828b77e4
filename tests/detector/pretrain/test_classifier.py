"""Tests of ``sppdet.detector.pretrain.classifier``: the pretrain checkpoint written and read
back as a classifier."""

from __future__ import annotations

import pytest
import torch

from sppdet.cache.atomic import TMP_MARK
from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.classifier import load_classifier, write_checkpoint
from sppdet.detector.pretrain.images import preprocessing_for
from sppdet.detector.pretrain.model import build_classifier
from tests.detector.pretrain.shared import STATS, random_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_written_classifier_reads_back_with_the_same_scores(tmp_path):
    model = build_classifier("zf5", 3, (1, 2, 3, 6), 16, 0.5, seed=5, fc8_std=0.5).eval()
    pre = preprocessing_for("zf5", STATS)
    entry = {
        "classes": ["a", "b", "c"],
        "background": False,
        "sizes": [48, 64],
        "crop_fraction": 0.875,
        "note": "kept",
    }
    path = write_checkpoint(tmp_path / "c.pt", model, "zf5", pre, entry, "test source")
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))  # the staged backbone file is gone
    clf = load_classifier(path)
    assert (clf.arch, clf.classes, clf.background) == ("zf5", ("a", "b", "c"), False)
    assert (clf.sizes, clf.test_size, clf.crop_fraction) == ((48, 64), 64, 0.875)
    assert clf.record["note"] == "kept" and clf.preprocessing == pre
    x = pre(random_image(70, 90))
    with torch.inference_mode():
        expected, found = model(x), clf.model(x)
    assert found.shape == (1, 3) and torch.equal(found, expected)


def test_load_classifier_refuses_a_backbone_without_fc8(tmp_path):
    model = build_classifier("zf5", 2, (1, 2, 3, 6), 8, 0.5, 0, 0.01)
    path = save_backbone_checkpoint(
        tmp_path / "b.pt",
        "zf5",
        model.trunk,
        preprocessing_for("zf5", STATS),
        model.head,
        (1, 2, 3, 6),
    )
    with pytest.raises(SppdetError, match="without a classifier"):
        load_classifier(path)
