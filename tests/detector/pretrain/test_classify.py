"""classify-eval: view geometry, full-image and multi-view scores against their definitions,
top-k accuracy, and the evaluation of a checkpoint end to end."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.pretrain.classify import (
    ViewSettings,
    accuracy,
    check_views,
    classify_eval,
    default_views,
    full_image_scores,
    load_classifier,
    multiview_scores,
    topk_correct,
    view_windows,
)
from sppdet.detector.pretrain.images import ColorStats, center_crop, preprocessing_for
from sppdet.detector.pretrain.model import build_classifier
from sppdet.detector.pretrain.samples import BACKGROUND, load_samples
from sppdet.detector.pretrain.train import write_checkpoint
from sppdet.detector.spp.image_spp import image_spp

STATS = ColorStats(
    (110.0, 100.0, 90.0),
    (60.0, 55.0, 50.0),
    (1.0,) * 3,
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_checkpoint(path: Path, classes, background: bool, arch: str = "zf5") -> Path:
    """A checkpoint in pretrain's format with random weights (seeded), sizes 48 and 64."""
    model = build_classifier(arch, len(classes), (1, 2, 3, 6), 16, 0.5, seed=7, fc8_std=0.5)
    entry = {
        "classes": list(classes),
        "background": background,
        "source_kind": "detection" if background else "folder",
        "fc_dim": 16,
        "sizes": [48, 64],
        "crop_fraction": 0.875,
        "bg_per_image": 1,
        "bg_iou": 0.3,
    }
    return write_checkpoint(path, model.eval(), arch, preprocessing_for(arch, STATS), entry, "t")


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    return load_classifier(random_checkpoint(path, ("a", "b", "c"), False))


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- windows


def test_view_windows_by_hand():
    w5 = view_windows(100, 150, 64, 5)
    # Corners, then the centre ((150 - 64) // 2 = 43, (100 - 64) // 2 = 18).
    np.testing.assert_array_equal(
        w5,
        [[0, 0, 63, 63], [86, 0, 149, 63], [0, 36, 63, 99], [86, 36, 149, 99], [43, 18, 106, 81]],
    )
    w9 = view_windows(100, 150, 64, 9)
    assert len(w9) == 9 and {tuple(r) for r in w5} <= {tuple(r) for r in w9}
    assert [43, 0, 106, 63] in w9.tolist() and [0, 18, 63, 81] in w9.tolist()


def test_default_views_follow_the_paper():
    views = default_views(224, 0.875)
    assert (views.size, views.full_side, views.view_scales, views.count) == (224, 256, (256,), 10)
    assert default_views(224, 0.875, 18).count == 18
    with pytest.raises(SppdetError, match="--views 12"):
        default_views(224, 0.875, 12)
    with pytest.raises(SppdetError, match="at least the view size 224"):
        check_views(ViewSettings(224, 256, (200,)))


# ------------------------------------------------------------------------------------ views


def test_full_image_view_of_a_square_equals_the_centre_crop_of_the_same_pixels(clf):
    big = image(128, 128)
    crop_view = center_crop(big, 0.875, 112)  # 0.875 * 128 = 112 pixels from (8, 8): no resize
    np.testing.assert_array_equal(crop_view, big[8:120, 8:120])
    with torch.inference_mode():
        crop_logits = clf.model(clf.preprocessing(crop_view))[0]
    full_logits = full_image_scores(clf, big[8:120, 8:120], side=112)
    assert torch.equal(crop_logits, full_logits)
    # On a non-square image the full view sees more than the centre crop.
    wide = image(112, 170, seed=1)
    assert not torch.allclose(
        full_image_scores(clf, wide, 112),
        clf.model(clf.preprocessing(center_crop(wide, 1.0, 112)))[0].detach(),
    )


def test_full_image_view_uses_whole_map_spp_at_the_given_side(clf):
    region = image(90, 140, seed=2)
    resized = cv2.resize(region, (round(140 * 112 / 90), 112), interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        maps = clf.model.trunk(clf.preprocessing(resized))
        expected = clf.model.head(image_spp(maps, (1, 2, 3, 6)))[0]
    assert maps.shape[-2:] == (6, 9)  # 112 x 174 pixels: 54x85, 27x42, 12x19, 6x9
    torch.testing.assert_close(full_image_scores(clf, region, 112), expected)


def test_a_view_covering_the_whole_map_equals_whole_image_spp(clf):
    square = image(112, 112, seed=3)
    views = ViewSettings(size=112, full_side=112, view_scales=(112,), positions=5, flip=False)
    scores = multiview_scores(clf, square, views)
    full = torch.softmax(full_image_scores(clf, square, 112), 0)
    assert scores.shape == (5, 3)
    for row in scores:  # five identical windows, each the whole image
        torch.testing.assert_close(row, full, rtol=1e-5, atol=1e-6)


def test_multiview_of_a_mirrored_image_is_the_same_set_of_views(clf):
    region = image(96, 130, seed=4)
    views = ViewSettings(size=64, full_side=73, view_scales=(73, 90), positions=9, flip=True)
    scores = multiview_scores(clf, region, views)
    mirrored = multiview_scores(clf, np.ascontiguousarray(region[:, ::-1]), views)
    assert scores.shape == (views.count, 3) == (36, 3)
    torch.testing.assert_close(scores.mean(0), mirrored.mean(0), rtol=1e-5, atol=1e-6)
    # Corner views differ from each other: the windows really move on the map.
    assert not torch.allclose(scores[0], scores[2])


def test_multiview_corner_window_lies_on_the_right_cells(clf):
    """A corner window of a larger image sees the top-left cells only: putting noise in the far
    corner does not change the top-left view's score (the receptive fields are limited)."""
    region = image(240, 240, seed=5)
    changed = region.copy()
    changed[200:, 200:] = 255 - changed[200:, 200:]
    views = ViewSettings(size=64, full_side=240, view_scales=(240,), positions=5, flip=False)
    a, b = multiview_scores(clf, region, views), multiview_scores(clf, changed, views)
    torch.testing.assert_close(a[0], b[0])  # top-left window: cells far from the change
    assert not torch.allclose(a[3], b[3])  # bottom-right window sees it


# ---------------------------------------------------------------------------------- metrics


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
    assert r["top1"] == 0.5 and r["top5"] == 0.75 and r["samples"] == 4
    assert r["per_class_top1"] == {"bg": 0.5, "a": 1.0, "d": 0.0}
    assert r["mean_class_top1"] == pytest.approx(0.5)
    assert accuracy(scores[:, :5], labels, names[:5])["top5"] is None  # five classes: trivial


# -------------------------------------------------------------------------------- checkpoint


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


def test_classify_eval_on_detection_crops_matches_a_direct_computation(tmp_path):
    shapes = ("circle", "cross", "diamond", "square", "triangle")
    voc = make_synthetic_voc(tmp_path / "voc", 6, seed=4, image_size=(96, 128), classes=shapes)
    ckpt = random_checkpoint(tmp_path / "six.pt", (BACKGROUND, *shapes), True)
    report = classify_eval(ckpt, voc, "test", workers=0, progress=False, device="cpu")
    clf = load_classifier(ckpt)
    samples = load_samples(voc, "test", PretrainConfig(), clf.classes, require_all=False, seed=0)
    assert report["counts"] == samples.counts() and report["counts"][BACKGROUND] > 0
    assert report["views"] == {
        "size": 64,
        "full_side": 73,
        "view_scales": [73],
        "multiview_count": 10,
    }
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
    assert report["results"]["center"]["top1"] == pytest.approx(np.mean(hits))
    for view in ("center", "full", "multiview"):
        r = report["results"][view]
        assert r["samples"] == len(samples) and r["top5"] is not None and r["top5"] >= r["top1"]
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
    assert wider["views"]["multiview_count"] == 36 and wider["views"]["full_side"] == 64
    folder_model = random_checkpoint(tmp_path / "folder.pt", ("circle", "square"), False)
    with pytest.raises(SppdetError, match="trained on an image-folder tree"):
        classify_eval(folder_model, voc, "test", workers=0, progress=False, device="cpu")
