"""pretrain: data sources, crops, colour statistics, plateau drops, multi-size epochs, learning,
determinism, exact resume, the checkpoint as a backbone, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.boxes import iou_matrix
from sppdet.detector.classify import classify_eval, load_classifier
from sppdet.detector.config import FeatureConfig, PretrainConfig
from sppdet.detector.data import load_dataset
from sppdet.detector.errors import SppdetError
from sppdet.detector.featurize import cache_features
from sppdet.detector.nets import load_backbone, read_checkpoint
from sppdet.detector.pretrain import (
    BACKGROUND,
    ColorStats,
    Plateau,
    RegionImages,
    batches,
    build_classifier,
    center_crop,
    check_input_sizes,
    color_augment,
    detection_samples,
    estimate_color_stats,
    expand_boxes,
    folder_samples,
    holdout_split,
    load_samples,
    preprocessing_for,
    pretrain,
    raise_load_errors,
    random_crop,
    sample_background,
    state_path,
)
from sppdet.detector.synthetic import make_synthetic_voc

# Small enough to train in seconds on two busy cores.
CFG = PretrainConfig(
    sizes=(48, 64), epochs=2, batch_size=4, fc_dim=16, workers=0, device="cpu", seed=3
)
# Long enough to learn red from blue: from the paper's initialisation (fc8 ~ N(0, 0.01)) the
# loss stays near ln 2 for the first dozen steps.
LEARN = dataclasses.replace(CFG, epochs=5, fc_dim=32, seed=1)


def make_color_tree(root: Path, per_class: int = 12, splits=("train", "test")) -> Path:
    """An image-folder tree of noisy reddish vs bluish images of random sizes (trivially
    separable by colour), one sub-tree per split."""
    for s, split in enumerate(splits):
        for c, name in enumerate(("blue", "red")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([s, c, i])
                h, w = (int(v) for v in rng.integers(50, 80, 2))
                image = rng.integers(0, 110, (h, w, 3)).astype(np.uint8)
                image[..., 2 if name == "red" else 0] += 130  # BGR on disk
                cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(state_path(path), weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on two cores shared with other work, small convolutions run several
    times faster than with two threads waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_color_tree(tmp_path_factory.mktemp("tree"), per_class=16)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return make_color_tree(tmp_path_factory.mktemp("small"), per_class=6, splits=("train",))


@pytest.fixture(scope="module")
def learned(tree: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("learn") / "model.pt"
    return out, pretrain(tree, out, LEARN, split="train", progress=False)


@pytest.fixture(scope="module")
def trained(small_tree: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "model.pt"
    return out, pretrain(small_tree, out, CFG, split="train", progress=False)


# ------------------------------------------------------------------------------------- sources


def test_folder_samples_use_the_split_folder_and_skip_non_images(tree, tmp_path):
    samples = folder_samples(tree, "train")
    assert samples.classes == ("blue", "red")
    assert samples.counts() == {"blue": 16, "red": 16}
    assert samples.root == str(tree / "train")
    assert np.isinf(samples.regions[:, 2:]).all() and (samples.regions[:, :2] == 0).all()
    # Without a split folder the tree itself holds the classes; stray files are ignored.
    flat = tmp_path / "flat"
    shutil.copytree(tree / "test", flat)
    (flat / "red" / "notes.txt").write_text("not an image")
    samples = folder_samples(flat, "trainval")
    assert samples.counts() == {"blue": 16, "red": 16}


def test_empty_class_folder_is_a_one_line_error(tree, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tree / "train", root)
    (root / "green").mkdir()
    with pytest.raises(SppdetError, match=r"green: class 'green' holds no images") as err:
        folder_samples(root, "trainval")
    assert "\n" not in str(err.value)


def test_unreadable_image_is_a_one_line_error(tree, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tree / "train", root)
    broken = root / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    samples = folder_samples(root, "trainval")
    k = samples.paths.index(broken)
    # The loading threads hand the message over instead of raising it themselves.
    data = RegionImages(samples, np.array([0, k]), 48, preprocessing_for("zf5", _grey_stats()), 1)
    with pytest.raises(SppdetError, match="broken.jpg: not a readable image") as err:
        for _, _, errors in batches(data, 2, workers=1):
            raise_load_errors(errors)
    assert "remove or replace the file" in str(err.value) and "\n" not in str(err.value)
    load_commands()
    code = run_app(
        [
            "pretrain",
            "--data",
            str(root),
            "--sizes",
            "48",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "m.pt"),
            "--workers",
            "0",
        ]
    )
    assert code == 2
    assert not (tmp_path / "m.pt").exists()


def _grey_stats() -> ColorStats:
    eye = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    return ColorStats((128.0,) * 3, (64.0,) * 3, (1.0,) * 3, eye)


def test_expand_boxes_by_hand():
    boxes = np.array([[10, 20, 29, 59], [0, 0, 9, 9]], np.float64)  # 20 x 40 and 10 x 10 pixels
    grown = expand_boxes(boxes, 1.5, width=100, height=100)
    # Centre (19.5, 39.5); 30 x 60 pixels -> x 5 .. 34, y 10 .. 69. The second is clipped at 0.
    np.testing.assert_allclose(grown[0], [5.0, 10.0, 34.0, 69.0])
    np.testing.assert_allclose(grown[1], [0.0, 0.0, 11.5, 11.5])


def test_background_boxes_overlap_no_object_by_03():
    objects = np.array([[10, 10, 120, 90], [150, 40, 199, 149]], np.float64)
    rng = np.random.default_rng(5)
    bg = sample_background(objects, 200, 150, 8, 0.3, rng)
    assert len(bg) == 8
    assert (bg[:, :2] >= 0).all() and (bg[:, 2] <= 199).all() and (bg[:, 3] <= 149).all()
    assert ((bg[:, 2] - bg[:, 0] + 1) >= 16).all()
    for box in bg:  # IoU with the +1 convention, written out
        for obj in objects:
            iw = min(box[2], obj[2]) - max(box[0], obj[0]) + 1
            ih = min(box[3], obj[3]) - max(box[1], obj[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (
                (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                + (obj[2] - obj[0] + 1) * (obj[3] - obj[1] + 1)
                - inter
            )
            assert inter / union < 0.3
    same = sample_background(objects, 200, 150, 8, 0.3, np.random.default_rng(5))
    np.testing.assert_array_equal(bg, same)
    # Inside an object that fills the image, IoU is the box's share of the image: only boxes
    # smaller than 30% of it qualify (the IoU rule counts them as background).
    full = np.array([[0, 0, 199, 149]], np.float64)
    inside = sample_background(full, 200, 150, 64, 0.3, np.random.default_rng(0))
    share = (inside[:, 2] - inside[:, 0] + 1) * (inside[:, 3] - inside[:, 1] + 1) / (200 * 150)
    assert 0 < len(inside) < 64 and (share < 0.3).all()


def test_detection_dataset_gives_objects_and_background(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", num_images=8, image_size=(96, 128), seed=2)
    cfg = dataclasses.replace(CFG, bg_per_image=2)
    samples = detection_samples(voc, "trainval", cfg)
    dataset = load_dataset(voc, "trainval")
    assert samples.classes == (BACKGROUND, *dataset.classes)
    objects, regions = [], []
    for record in dataset.records:
        keep = ~record.difficult
        objects += list(record.labels[keep] + 1)
        regions.append(expand_boxes(record.boxes[keep], 1 / 0.875, record.width, record.height))
    fg = samples.labels > 0
    assert sorted(samples.labels[fg].tolist()) == sorted(int(v) for v in objects)
    np.testing.assert_allclose(
        sorted(map(tuple, samples.regions[fg])), sorted(map(tuple, np.concatenate(regions)))
    )
    assert 0 < (~fg).sum() <= 2 * len(dataset.records)
    # Every background region's core box (shrunk back) has IoU < 0.3 with every object.
    by_path = {r.path: r for r in dataset.records}
    for k in np.flatnonzero(~fg):
        record = by_path[samples.paths[samples.image[k]]]
        r = samples.regions[k]
        core = expand_boxes(r[None], 0.875, record.width, record.height)
        if (r[:2] > 0).all() and r[2] < record.width - 1 and r[3] < record.height - 1:
            assert iou_matrix(core, record.boxes).max(initial=0) < 0.3 + 1e-9
    # The same seed gives the same samples.
    again = detection_samples(voc, "trainval", cfg)
    np.testing.assert_array_equal(samples.regions, again.regions)


def test_coco_json_gives_object_and_background_crops(tmp_path):
    images, annotations = [], []
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((80, 120, 3), 40 * i, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 120, "height": 80})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 7,
                "bbox": [10, 20, 30, 16],
                "area": 480,
                "iscrowd": 0,
            }
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "thing"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    samples = load_samples(tmp_path / "train.json", "ignored", CFG)
    assert samples.classes == (BACKGROUND, "thing")
    assert samples.counts() == {BACKGROUND: 2, "thing": 2}
    # COCO [x, y, w, h] = [10, 20, 30, 16] covers pixels 10..39 x 20..35, grown by 8/7.
    expected = expand_boxes(np.array([[10, 20, 39, 35]]), 1 / 0.875, 120, 80)[0]
    np.testing.assert_allclose(samples.regions[samples.labels == 1], [expected, expected])


def test_detection_class_without_objects_is_an_error(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", num_images=4, image_size=(96, 128), seed=2)
    with pytest.raises(SppdetError, match=r"no usable \(non-difficult\) objects of \['ring'\]"):
        load_samples(voc, "trainval", CFG, classes=(BACKGROUND, "circle", "ring"))


def test_holdout_takes_every_tenth_image_with_all_its_crops(tree):
    samples = folder_samples(tree, "train")
    train, held = holdout_split(samples, 10)
    assert held.tolist() == [9, 19, 29]
    assert sorted(train.tolist() + held.tolist()) == list(range(32))
    few = samples.subset(np.arange(5))
    assert len(holdout_split(few, 10)[1]) == 0


# ------------------------------------------------------------------------------------- images


def test_center_and_random_crops():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    # Side 0.875 * 40 = 35, centred: rows 2..36, columns 12..46; no resize at size 35.
    np.testing.assert_array_equal(center_crop(image, 0.875, 35), image[2:37, 12:47])
    rng = np.random.default_rng(0)
    places = set()
    for _ in range(20):
        crop = random_crop(image, 0.5, 20, rng)  # side 20 at one of 21 x 41 places
        hits = [
            (y, x)
            for y in range(21)
            for x in range(41)
            if np.array_equal(image[y : y + 20, x : x + 20], crop)
        ]
        assert len(hits) == 1
        places.add(hits[0])
    assert len(places) >= 15


def test_colour_statistics_and_preprocessing(tmp_path):
    root = tmp_path / "flat"
    colours = {"a": (200, 40, 10), "b": (20, 60, 240)}  # RGB
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        image = np.empty((30, 40, 3), np.uint8)
        image[:] = rgb[::-1]
        cv2.imwrite(str(root / name / "x.png"), image)
    stats = estimate_color_stats(folder_samples(root, "none"), seed=0)
    np.testing.assert_allclose(stats.mean, (110.0, 50.0, 125.0))
    np.testing.assert_allclose(stats.std, (90.0, 10.0, 115.0))
    # Two colours: all variance lies along their difference.
    diff = np.array(colours["a"], float) - colours["b"]
    np.testing.assert_allclose(stats.eigval[0], (diff @ diff) / 4, rtol=1e-9)
    np.testing.assert_allclose(stats.eigval[1:], 0, atol=1e-6)
    axis = np.array(stats.eigvec)[:, 0]
    np.testing.assert_allclose(abs(axis @ diff) / np.linalg.norm(diff), 1.0, rtol=1e-9)
    zf5 = preprocessing_for("zf5", stats)
    assert zf5.channel_order == "BGR" and zf5.pixel_range == 255.0
    np.testing.assert_allclose(zf5.mean, (125.0, 50.0, 110.0))
    np.testing.assert_allclose(zf5.std, (115.0, 10.0, 90.0))
    alex = preprocessing_for("alexnet", stats)
    assert alex.channel_order == "RGB" and alex.pixel_range == 1.0
    np.testing.assert_allclose(alex.mean, np.array((110.0, 50.0, 125.0)) / 255)


def test_colour_augment_shifts_along_the_principal_axes():
    stats = ColorStats(
        (0.0,) * 3,
        (1.0,) * 3,
        (400.0, 100.0, 0.0),
        ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    )
    image = np.full((4, 4, 3), 100.0, np.float32)
    out = color_augment(image, np.random.default_rng(1), stats, lighting=0.1, jitter=0.0)
    alpha = np.random.default_rng(1)
    alpha.uniform(1, 1, 3)
    a = alpha.normal(0.0, 0.1, 3)
    # Axis 0 (std 20) is red, axis 1 (std 10) is blue, axis 2 has no variance.
    np.testing.assert_allclose(out[0, 0], [100 + 20 * a[0], 100, 100 + 10 * a[1]], rtol=1e-5)


# --------------------------------------------------------------------------------- learning


def test_plateau_drops_twice_at_most():
    plateau = Plateau(0.01)
    values = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]
    drops = [plateau.step(v, patience=3, factor=0.1, max_drops=2) for v in values]
    assert [i for i, d in enumerate(drops) if d] == [4, 7]
    assert plateau.lr == pytest.approx(1e-4) and plateau.drops == 2
    # A step for a cycle of two sizes counts two epochs: patience 3 runs out after two cycles.
    cycles = Plateau(0.01)
    drops = [cycles.step(v, 3, 0.1, 2, epochs=2) for v in (1.0, 1.0, 1.0, 0.5, 0.6)]
    assert drops == [False, False, True, False, False]


def test_spp_output_length_is_the_same_at_every_size():
    model = build_classifier("zf5", 3, (1, 2, 3, 6), 8, 0.5, 0, 0.01).eval()
    with torch.no_grad():
        for size in (48, 64, 97):
            assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)
    with pytest.raises(SppdetError, match="--sizes 8: too small for the zf5 trunk"):
        check_input_sizes(model.trunk, (64, 8))


def test_training_learns_and_alternates_sizes(learned, tree):
    out, result = learned
    assert [h["size"] for h in result.history] == [48, 64, 48, 64, 48]
    assert result.heldout == 3 and result.train_counts == {"blue": 15, "red": 14}
    assert result.history[-1]["heldout_error"] == 0.0
    report = classify_eval(out, tree, "test", workers=0, progress=False, device="cpu")
    for view in ("center", "full", "multiview"):
        assert report["results"][view]["top1"] >= 0.9, (view, report["results"][view])
        assert report["results"][view]["top5"] is None  # two classes
    assert report["results"]["center"]["samples"] == 32


def test_same_seed_same_weights_whatever_the_workers(trained, small_tree, tmp_path):
    out, _ = trained
    again = tmp_path / "again.pt"
    pretrain(small_tree, again, dataclasses.replace(CFG, workers=1), split="train", progress=False)
    assert_same_weights(state_dict(out), state_dict(again))
    assert torch.load(again, weights_only=True)["trunk"]["conv1.weight"].abs().sum() > 0


def test_resume_after_an_interrupted_epoch_gives_the_same_weights(trained, small_tree, tmp_path):
    out, result = trained
    cut = tmp_path / "cut.pt"

    def interrupt(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(small_tree, cut, CFG, split="train", progress=False, on_batch=interrupt)
    assert torch.load(state_path(cut), weights_only=True)["epoch"] == 1
    assert not cut.exists()
    lines: list[str] = []
    resumed = pretrain(small_tree, cut, CFG, split="train", progress=False, log=lines.append)
    assert resumed.epochs_run == 1 and lines[0].startswith("resuming")
    assert_same_weights(state_dict(out), state_dict(cut))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in result.history]


def test_resume_refuses_other_settings(trained, small_tree, tmp_path):
    out, _ = trained
    copy = tmp_path / "model.pt"
    shutil.copy(state_path(out), state_path(copy))
    with pytest.raises(SppdetError, match=r"other settings .*base_lr.*--no-resume"):
        pretrain(
            small_tree, copy, dataclasses.replace(CFG, base_lr=0.02), split="train", progress=False
        )
    # --no-resume starts over with the new settings.
    fresh = pretrain(
        small_tree,
        copy,
        dataclasses.replace(CFG, base_lr=0.02, epochs=1),
        split="train",
        resume=False,
        progress=False,
    )
    assert fresh.epochs_run == 1 and [h["lr"] for h in fresh.history] == [0.02]
    shutil.copy(state_path(out), state_path(copy))
    # More epochs continue the same run.
    longer = pretrain(
        small_tree, copy, dataclasses.replace(CFG, epochs=3), split="train", progress=False
    )
    assert longer.epochs_run == 1 and [h["epoch"] for h in longer.history] == [1, 2, 3]


# ------------------------------------------------------------------------------- checkpoint


def test_checkpoint_is_a_backbone_for_cache_features(trained, tmp_path):
    out, _ = trained
    record = read_checkpoint(out, "zf5")
    model = state_dict(out)
    backbone = load_backbone("zf5", str(out))
    for name, value in backbone.trunk.features.state_dict().items():
        assert torch.equal(value, model[f"trunk.features.{name}"])
    assert backbone.head_pyramid == (1, 2, 3, 6)
    head = backbone.head_state((1, 2, 3, 6))
    assert set(head) == {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    assert torch.equal(head["fc6.weight"], model["head.fc6.weight"])
    assert head["fc6.weight"].shape == (16, 256 * 50)
    assert backbone.preprocessing == record["preprocessing"]
    assert backbone.preprocessing.channel_order == "BGR"
    entry = record["classifier"]
    assert entry["classes"] == ["blue", "red"] and entry["sizes"] == [48, 64]
    assert torch.equal(entry["fc8.weight"], model["head.fc8.weight"])
    assert load_classifier(out).classes == ("blue", "red")
    # cache-features runs the trained trunk.
    voc = make_synthetic_voc(tmp_path / "voc", num_images=2, image_size=(64, 80), seed=1)
    config = FeatureConfig(weights=str(out), scales=(64,), device="cpu", shard_size=2)
    stats = cache_features(load_dataset(voc, "trainval"), tmp_path / "work", config, progress=False)
    assert stats.computed == 1


def test_cli_pretrain_and_classify_eval(small_tree, tmp_path, capsys):
    load_commands()
    out = tmp_path / "cli.pt"
    code = run_app(
        [
            "pretrain",
            "--backbone",
            "zf5",
            "--data",
            str(small_tree),
            "--split",
            "train",
            "--sizes",
            "48",
            "--epochs",
            "1",
            "--fc-dim",
            "8",
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "8",
            "--seed",
            "1",
        ]
    )
    assert code == 0 and out.is_file() and state_path(out).is_file()
    assert "trained 1 epochs" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    code = run_app(
        [
            "classify-eval",
            "--ckpt",
            str(out),
            "--data",
            str(small_tree),
            "--workers",
            "0",
            "--split",
            "train",
            "--report",
            str(report),
            "--json",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert '"multiview_count": 10' in printed and report.is_file()
    assert run_app(["pretrain", "--data", str(small_tree), "--backbone", "zf9"]) == 2
    assert "unknown backbone 'zf9'" in capsys.readouterr().err
