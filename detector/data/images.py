"""Image decoding: ``read_image`` is the one way every stage turns an image file into pixels.

Every stage sees the same pixels: 8-bit RGB, three channels (grey is replicated, alpha dropped,
CMYK converted), with the EXIF orientation applied, as a browser or an annotation tool shows the
photo. The dataset's boxes are taken to refer to that upright view.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sppdet.detector.core.errors import SppdetError


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3], EXIF orientation applied.

    Raises SppdetError naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SppdetError(f"{path}: cannot read image ({exc.strerror})") from None
    # IMREAD_COLOR turns grey, alpha and CMYK into 3-channel BGR and applies EXIF orientation.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SppdetError(f"{path}: not a readable image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
