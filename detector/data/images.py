"""Image decoding: ``read_image`` is the one way every stage turns an image file into pixels.

Every stage sees the same pixels: 8-bit RGB, three channels (grey is replicated, alpha dropped,
CMYK converted), with the EXIF orientation applied, as a browser or an annotation tool shows the
photo. The dataset's boxes are taken to refer to that upright view.

Decoding is guarded: the header's size is checked against ``MAX_IMAGE_PIXELS`` before any pixel
is decoded, and what the decoders print on damaged data (libjpeg's "Corrupt JPEG data: ...")
becomes one logged warning naming the file instead of raw lines on stderr. ``image_header`` reads
the size and EXIF orientation from the first bytes of a JPEG, PNG or BMP file; ``path_inside``
keeps the files a dataset names inside its folders.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from sppdet.detector.core.errors import SppdetError

# OpenCV's own cap (CV_IO_MAX_IMAGE_PIXELS), enforced here first so the message can say the size.
MAX_IMAGE_PIXELS = 1 << 30

log = logging.getLogger(__name__)

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the photo by 90 degrees
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: markers without a segment
_EXIF_ORIENTATION_TAG = 0x0112
_DECODER_WORDS = ("JPEG", "libpng", "Warning", "warning")  # lines the decoders print
_FIX = "replace the file or remove it from the split"


@dataclass(frozen=True)
class ImageHeader:
    """An image file's stored size and EXIF orientation (1: upright as stored)."""

    width: int
    height: int
    orientation: int = 1

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the picture ``read_image`` returns (orientation applied)."""
        if self.orientation in _SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def _jpeg_orientation(segment: bytes) -> int:
    """The orientation tag of an APP1 Exif segment's first image directory (1 when absent)."""
    if not segment.startswith(b"Exif\0\0") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (first,) = struct.unpack(order + "I", tiff[4:8])
    if first + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[first : first + 2])
    for i in range(count):
        entry = tiff[first + 2 + 12 * i : first + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind, _, value = struct.unpack(order + "HHI4s", entry)
        if tag == _EXIF_ORIENTATION_TAG and kind == 3:  # a SHORT, stored in the value field
            return struct.unpack(order + "H", value[:2])[0]
    return 1


def _jpeg_header(handle: BinaryIO) -> ImageHeader | None:
    orientation = 1
    while True:
        byte = handle.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            return None  # markers follow one another up to the image data
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_NO_LENGTH:
            continue
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        length = int.from_bytes(length_bytes, "big") - 2
        if code in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return ImageHeader(width, height, orientation)
        if code == 0xE1 and orientation == 1:
            orientation = _jpeg_orientation(handle.read(length))
        else:
            handle.seek(length, io.SEEK_CUR)


def read_header(handle: BinaryIO) -> ImageHeader | None:
    """The header of the JPEG, PNG or BMP file HANDLE reads (at its start); None otherwise."""
    start = handle.read(26)
    if start[:3] == b"\xff\xd8\xff":
        handle.seek(2)
        return _jpeg_header(handle)
    if start[:8] == b"\x89PNG\r\n\x1a\n" and start[12:16] == b"IHDR":
        width, height = struct.unpack(">II", start[16:24])
        return ImageHeader(width, height)
    if start[:2] == b"BM" and len(start) >= 26:
        width, height = struct.unpack("<ii", start[18:26])
        return ImageHeader(abs(width), abs(height))  # a negative height stores rows top-down
    return None


def image_header(path: str | Path) -> ImageHeader | None:
    """The header of the image file PATH (a few small reads), or None when it is not one."""
    try:
        with open(path, "rb") as handle:
            return read_header(handle)
    except (OSError, struct.error):
        return None


# The decoders print to file descriptor 2, which all threads share: one decode at a time
# borrows it, into one reused temporary file.
_stderr_guard = threading.Lock()
_stderr_capture: BinaryIO | None = None


def _capture_file() -> BinaryIO | None:
    global _stderr_capture
    if _stderr_capture is None:
        try:
            _stderr_capture = tempfile.TemporaryFile()
        except OSError:  # no writable temporary folder: decode without capturing
            return None
    _stderr_capture.seek(0)
    _stderr_capture.truncate()
    return _stderr_capture


@contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect the lines C code prints to stderr meanwhile that come from the image decoders;
    other lines (another thread's output) are passed on afterwards."""
    lines: list[str] = []
    with _stderr_guard:
        capture = _capture_file()
        if sys.stderr is not None:
            sys.stderr.flush()
        try:
            saved = os.dup(2) if capture is not None else None
        except OSError:  # no stderr at all: nothing to capture
            saved = None
        if capture is None or saved is None:
            yield lines
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            others = []
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if any(word in line for word in _DECODER_WORDS):
                    lines.append(line.strip())
                else:
                    others.append(line)
            if others:
                os.write(2, "".join(others).encode())


def path_inside(folder: str | Path, name: str) -> Path | None:
    """FOLDER/NAME when NAME stays inside FOLDER, None when it is absolute or leads out through
    '..'. Judged on the names alone: symbolic links inside a dataset may point anywhere."""
    relative = os.path.normpath(name) if name else ""
    if not relative or os.path.isabs(relative) or relative == os.curdir:
        return None
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return Path(folder) / relative


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3], EXIF orientation applied.

    Raises SppdetError naming the file when it is missing, empty, over ``MAX_IMAGE_PIXELS``
    or undecodable; damaged data that still decodes is logged as one warning.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SppdetError(
            f"{path}: cannot read image ({exc.strerror}) ; check the path and its permissions"
        ) from None
    if not raw:
        raise SppdetError(f"{path}: not a readable image (empty file) ; {_FIX}")
    try:
        header = read_header(io.BytesIO(raw))
    except struct.error:
        header = None
    if header is not None and header.width * header.height > MAX_IMAGE_PIXELS:
        raise SppdetError(
            f"{path}: {header.width}x{header.height} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS:,} ; downscale the image or remove it from the split"
        )
    # IMREAD_COLOR turns grey, alpha and CMYK into 3-channel BGR and applies EXIF orientation.
    try:
        with _decoder_messages() as messages:
            image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise SppdetError(f"{path}: not a readable image ({reason}) ; {_FIX}") from None
    if image is None:
        raise SppdetError(f"{path}: not a readable image (corrupt or unsupported format) ; {_FIX}")
    if messages:
        log.warning(
            "%s: damaged image data (%s); decoded anyway, parts of it may be grey ; %s",
            path, messages[0], _FIX,
        )  # fmt: skip
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
