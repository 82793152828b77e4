"""The R-CNN feature path: warping against independent references, the store and its lookups, and
the training and test stages run the R-CNN way from the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import FeatureConfig, RcnnConfig, SppConfig, SvmConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.rcnn import (
    RcnnFeaturizer,
    cache_rcnn_features,
    context_boxes,
    warp_windows,
)
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import dedup_negatives

load_commands()


def test_context_boxes_by_hand() -> None:
    # w = 20, h = 40; scale 224/192: half-sizes 11.667 and 23.333 about the centre (20, 40).
    got = context_boxes(np.array([[10, 20, 29, 59]]), 224, 16)
    np.testing.assert_array_equal(got, [[8, 17, 32, 63]])
    # R-CNN's centre is x1 + w/2, half a pixel right of the true centre: with no padding the
    # region is the window shifted to one pixel past its right and bottom edges.
    np.testing.assert_array_equal(
        context_boxes(np.array([[3, 4, 50, 60]]), 224, 0), [[3, 4, 51, 61]]
    )
    # Half-way values round away from zero, as MATLAB's round: centre 0.5, half 1 -> -0.5, 1.5.
    np.testing.assert_array_equal(context_boxes(np.array([[0, 0, 0, 0]]), 4, 1), [[-1, -1, 2, 2]])


def test_warp_equals_bilinear_resize_of_the_enlarged_crop() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 90, 120)).astype(np.float32)
    size, padding = 24, 3
    boxes = np.array([[30, 20, 79, 69], [40, 35, 99, 80], [10, 10, 45, 60]], np.float32)
    warped = warp_windows(torch.from_numpy(image)[None], boxes, size, padding).numpy()
    for k, box in enumerate(context_boxes(boxes, size, padding).astype(int)):
        x1, y1, x2, y2 = box
        assert x1 >= 0 and y1 >= 0 and x2 < 120 and y2 < 90  # inside: no border effects
        crop = image[:, y1 : y2 + 1, x1 : x2 + 1].transpose(1, 2, 0)
        # Every crop is larger than the output, so OpenCV's half-pixel bilinear never clamps.
        assert crop.shape[0] >= size and crop.shape[1] >= size
        expected = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(warped[k], expected.transpose(2, 0, 1), atol=1e-4)


def test_warp_outside_the_image_is_the_mean() -> None:
    image = torch.full((1, 3, 40, 40), 5.0)
    # A window in the corner: its enlarged box starts 20 px left of and above the image.
    warped = warp_windows(image, np.array([[0, 0, 9, 9]], np.float32), 16, 6)[0]
    assert torch.all(warped[:, :4, :4] == 0)  # the far outside is 0 (the mean)
    assert torch.all(warped[:, -3:, -3:] == 5.0)  # inside the image: the image


def test_pool5_batched_equals_one_window_at_a_time() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 60, 70], [20, 30, 129, 99], [0, 0, 129, 99], [50, 10, 70, 40]])
    config = RcnnConfig(warp_size=96, context_padding=8, batch_windows=3)
    backbone = load_backbone("zf5")
    featurizer = RcnnFeaturizer(backbone, (1, 2, 3), config, torch.device("cpu"))
    got = featurizer.pool5(featurizer.prepare(rgb), boxes.astype(np.float32))
    assert got.shape == (4, 256 * (1 + 4 + 9))
    for k, box in enumerate(boxes):
        crop = warp_windows(featurizer.prepare(rgb), box[None].astype(np.float32), 96, 8)
        with torch.no_grad():
            conv5 = backbone.trunk(crop)
        expected = torch.cat([F.adaptive_max_pool2d(conv5, n).flatten(1) for n in (1, 2, 3)], 1)
        torch.testing.assert_close(got[k : k + 1], expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rcnn")
    data = make_synthetic_voc(root / "data", num_images=8, seed=5, image_size=(120, 160))
    for split in ("trainval", "test"):
        args = ["propose", "--data", str(data), "--split", split, "--max-boxes", "12"]
        assert run_app([*args, "--work", str(root / "work")]) == 0
    return data, root / "work"


@pytest.fixture
def rcnn_work(proposed, tmp_path: Path) -> tuple[Path, WorkDir]:  # type: ignore[no-untyped-def]
    """A work folder of its own with the proposals of both splits."""
    data, work = proposed
    shutil.copytree(work, tmp_path / "work")
    return data, WorkDir.at(tmp_path / "work")


def _small(config: RcnnConfig | None = None) -> RcnnConfig:
    return config or RcnnConfig(warp_size=64, context_padding=8)


def test_store_holds_every_proposal_and_ground_truth_box(rcnn_work) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    dataset = load_dataset(data, "trainval")
    stats = cache_rcnn_features(
        dataset, work, FeatureConfig(), SppConfig(), _small(), progress=False
    )
    assert stats.computed == len(dataset.records)
    inputs = open_split(work, data, "trainval", features="rcnn")
    record = dataset.records[0]
    proposals = inputs.proposals(record.image_id)
    wanted = np.concatenate([record.boxes, proposals])[::-1]  # any order, duplicates allowed
    pooled = inputs.cache.pooled(record.image_id, wanted)
    # Independently: warp and pool the same boxes now.
    featurizer = RcnnFeaturizer(load_backbone("zf5"), (1, 2, 3, 6), _small(), torch.device("cpu"))
    fresh = featurizer.pool5(featurizer.prepare(read_image(record.path)), wanted.astype(np.float32))
    torch.testing.assert_close(pooled, fresh.to(torch.float16).float(), rtol=0, atol=0)
    with pytest.raises(SppdetError, match="no R-CNN features"):
        inputs.cache.pooled(record.image_id, np.array([[1, 2, 3, 4]]))
    # For R-CNN, only identical boxes share features: dedup keeps each distinct box once.
    doubled = np.concatenate([proposals, proposals])
    keep = dedup_negatives(inputs.cache, record.image_id, doubled, SvmConfig(neg_dedup="cells"))
    assert len(keep) == len(np.unique(proposals, axis=0))
    # Rerun: resumes (nothing to do); other settings: refused, naming --force.
    again = cache_rcnn_features(
        dataset, work, FeatureConfig(), SppConfig(), _small(), progress=False
    )
    assert again.computed == 0
    with pytest.raises(SppdetError, match="--force"):
        cache_rcnn_features(
            dataset, work, FeatureConfig(), SppConfig(), RcnnConfig(warp_size=64, context_padding=4)
        )


def test_the_pipeline_runs_the_rcnn_way_from_the_cli(rcnn_work, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    common = ["--data", str(data), "--work", str(work.root), "--features", "rcnn"]
    for split in ("trainval", "test"):
        assert run_app(["cache-features", *common, "--split", split]) == 0
    assert run_app(["train-svm", *common, "--layer", "pool5", "--preset", "quick-cpu"]) == 0
    assert work.model("svm-rcnn").is_file() and not work.model("svm").exists()
    assert run_app(["train-bbox", *common]) == 0
    assert run_app(["detect", *common]) == 0
    out = work.detections("test-rcnn")
    assert sorted(p.name for p in out.glob("comp4_det_test_*.txt"))
    assert run_app(["evaluate", "--data", str(data), "--detections", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    # Fine-tuned heads exist for SPP features only; the SPP models are not touched.
    assert run_app(["train-svm", *common, "--layer", "fc7", "--finetuned"]) == 2
    assert "--no-finetuned" in capsys.readouterr().err
    assert run_app(["detect", "--data", str(data), "--work", str(work.root)]) == 2
    assert "svm.pt: model not found" in capsys.readouterr().err
    assert run_app(["cache-features", *common, "--scales", "300"]) == 2
    assert "not used by --features rcnn" in capsys.readouterr().err


def test_a_missing_rcnn_store_names_the_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_synthetic_voc(tmp_path / "data", num_images=4, seed=1, image_size=(80, 100))
    work = tmp_path / "work"
    assert run_app(["propose", "--data", str(data), "--work", str(work), "--max-boxes", "5"]) == 0
    code = run_app(["train-svm", "--data", str(data), "--work", str(work), "--features", "rcnn"])
    assert code == 2
    assert "sppdet cache-features --features rcnn --split trainval" in capsys.readouterr().err
