"""One image's conv5 maps: decoded, resized to every cached scale, run through the trunk once each.

For each image and scale s the image is resized so that its shorter side is s (INTER_AREA when
shrinking, INTER_LINEAR when enlarging), the trunk runs once, and the conv5 map [C, h, w] comes
back on the CPU in the storage dtype (float16 by default; max pooling later only selects values,
so no accuracy is lost beyond the float16 rounding of each activation). With flip on, the
mirrored resized image is run too.

``max_size`` caps the longer side of every resized image: when s * max(H, W) / min(H, W) would
exceed it, the image is resized so its longer side is ``max_size`` instead, and its shorter side,
the *effective scale*, is smaller than s. The effective scale is stored per image and scale and is
what the window mapping and both best-scale rules use, so windows stay aligned with the map.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import Trunk
from sppdet.detector.core.device import autocast, device_input
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import ImageRecord

DTYPES = {"float16": torch.float16, "float32": torch.float32}


def conv5_name(scale_index: int, flipped: bool = False) -> str:
    return f"conv5_s{scale_index}" + ("_flip" if flipped else "")


def resized_size(height: int, width: int, scale: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) with the shorter side SCALE, unless the longer side would pass MAX_SIZE, in which
    case the longer side is MAX_SIZE (the shorter side, the effective scale, is then < SCALE)."""
    factor = scale / min(height, width)
    if max_size and max(height, width) * factor > max_size:
        factor = max_size / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


@dataclass
class LoadedImage:
    image_id: str
    height: int
    width: int
    resized: list[np.ndarray]  # uint8 RGB [h, w, 3] per scale
    seconds: float


@dataclass
class ImageMaps:
    image_id: str
    maps: list[tuple[str, np.ndarray]]
    attrs: dict[str, Any]


def load_resized(record: ImageRecord, scales: Sequence[int], max_size: int | None) -> LoadedImage:
    """Decode RECORD's image and resize it to every scale (runs in loader threads)."""
    start = time.perf_counter()
    image = read_image(record.path)
    height, width = image.shape[:2]
    resized = resize_to_scales(image, scales, max_size)
    return LoadedImage(record.image_id, height, width, resized, time.perf_counter() - start)


def resize_to_scales(
    image: np.ndarray, scales: Sequence[int], max_size: int | None
) -> list[np.ndarray]:
    """IMAGE resized so its shorter side is each scale (INTER_AREA when shrinking)."""
    height, width = image.shape[:2]
    resized = []
    for scale in scales:
        h, w = resized_size(height, width, scale, max_size)
        shrink = h * w < height * width
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized.append(cv2.resize(image, (w, h), interpolation=interp))
    return resized


def compute_conv5(
    trunk: Trunk,
    preprocessing: Preprocessing,
    resized: Sequence[np.ndarray],
    device: torch.device,
    flip: bool,
    dtype: torch.dtype,
    precision: str = "fp32",
) -> list[tuple[str, torch.Tensor]]:
    """conv5 maps [C, h, w] (CPU, DTYPE) of every resized image (and its mirror when FLIP)."""
    maps = []
    with torch.inference_mode(), autocast(device, precision):
        for k, image in enumerate(resized):
            x = device_input(preprocessing(image, device))
            maps.append((conv5_name(k), trunk(x)[0].to(dtype)))
            if flip:
                maps.append((conv5_name(k, True), trunk(x.flip(-1))[0].to(dtype)))
    return [(name, m.cpu()) for name, m in maps]


def prefetch(
    pool: ThreadPoolExecutor,
    records: Sequence[ImageRecord],
    scales: Sequence[int],
    max_size: int | None,
    depth: int,
) -> Iterator[Future]:
    """Futures of loaded images in order, keeping DEPTH loads in flight."""
    pending: list[Future] = []
    for record in records:
        pending.append(pool.submit(load_resized, record, scales, max_size))
        if len(pending) > depth:
            yield pending.pop(0)
    yield from pending
