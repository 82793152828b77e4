"""Tests of ``sppdet.detector.pretrain.images``."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.images import (
    ColorStats,
    RegionImages,
    batches,
    center_crop,
    color_augment,
    estimate_color_stats,
    preprocessing_for,
    raise_load_errors,
    random_crop,
)
from sppdet.detector.pretrain.samples import (
    folder_samples,
)


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
