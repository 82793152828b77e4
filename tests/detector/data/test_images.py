"""Tests of ``sppdet.detector.data.images``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import read_image


def test_read_image_gives_rgb_and_three_channels(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0]
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((5, 7), 99, np.uint8))
    assert read_image(tmp_path / "grey.png").shape == (5, 7, 3)


def test_read_image_applies_exif_orientation(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (40, 20), (0, 0, 255))
    exif = pil.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)  # upright: 20 wide


def test_read_image_errors(tmp_path):
    with pytest.raises(SppdetError, match="cannot read image"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(SppdetError, match="not a readable image"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(SppdetError, match="not a readable image"):
        read_image(tmp_path / "junk.jpg")
