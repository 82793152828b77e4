"""Tests of ``sppdet.detector.data.images``."""

from __future__ import annotations

import logging
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import (
    MAX_IMAGE_PIXELS,
    ImageHeader,
    _decoder_messages,
    image_header,
    path_inside,
    read_image,
)


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


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header announces WIDTH x HEIGHT grey pixels (its data is cut short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc)


def test_headers_give_the_decoded_size(tmp_path):
    rgb = np.zeros((37, 53, 3), np.uint8)
    for suffix in (".jpg", ".png", ".bmp"):
        path = tmp_path / f"image{suffix}"
        cv2.imwrite(str(path), rgb)
        assert image_header(path) == ImageHeader(53, 37, 1), suffix
    (tmp_path / "text.jpg").write_text("no image")
    assert image_header(tmp_path / "text.jpg") is None


def test_the_header_reads_the_exif_orientation(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (40, 20), (0, 0, 255))
    exif = pil.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    header = image_header(tmp_path / "rotated.jpg")
    assert header == ImageHeader(40, 20, 6)
    decoded = read_image(tmp_path / "rotated.jpg")
    assert header.upright_size == (decoded.shape[1], decoded.shape[0]) == (20, 40)


def test_an_image_over_the_pixel_limit_is_refused_by_its_header(tmp_path):
    png_header_only(tmp_path / "huge.png", 40000, 30000)
    with pytest.raises(SppdetError) as caught:
        read_image(tmp_path / "huge.png")
    assert str(caught.value) == (
        f"{tmp_path / 'huge.png'}: 40000x30000 pixels, over the limit of 1,073,741,824 ; "
        "downscale the image or remove it from the split"
    )
    assert 40000 * 30000 > MAX_IMAGE_PIXELS >= 32768 * 32768


def test_corrupt_jpeg_data_is_one_warning_naming_the_file(tmp_path, caplog, capfd):
    rng = np.random.default_rng(0)
    ok, encoded = cv2.imencode(".jpg", rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    data = bytearray(encoded.tobytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes([0xFF, 0x00] * 20)  # garbage in the entropy-coded data
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "sppdet.detector.data.images"):
        assert read_image(tmp_path / "bad.jpg").shape == (120, 160, 3)
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"{tmp_path / 'bad.jpg'}: damaged image data (Corrupt JPEG data: "
    )
    assert "Corrupt JPEG" not in capfd.readouterr().err  # libjpeg's own line is not printed


def test_decoder_messages_keep_what_other_code_prints(capfd):
    with _decoder_messages() as messages:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes\nprogress 40%\n")
    assert messages == ["Corrupt JPEG data: 3 extraneous bytes"]
    assert capfd.readouterr().err == "progress 40%\n"


@pytest.mark.parametrize(
    ("name", "inside"),
    [("a.jpg", "a.jpg"), ("sub/a.jpg", "sub/a.jpg"), ("sub/../a.jpg", "a.jpg"),
     ("../a.jpg", None), ("sub/../../a.jpg", None), ("/etc/hostname", None), ("", None),
     (".", None), ("..", None)],
)  # fmt: skip
def test_path_inside(tmp_path, name, inside):
    expected = None if inside is None else tmp_path / inside
    assert path_inside(tmp_path, name) == expected
