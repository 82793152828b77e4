"""The network inputs of ``pretrain`` samples: region pixels, crops, colour statistics and
augmentation, preprocessing, and batches loaded in threads.

Training crops (paper §3.1): a square of side ``crop_fraction`` (224/256) of the region's shorter
side at a random place, resized to the epoch's input size, flipped with probability 1/2, colour
altered (AlexNet's PCA lighting plus brightness/contrast/saturation factors), normalised with the
training set's per-channel mean and standard deviation (recorded as the checkpoint's
preprocessing, in the trunk's channel order and pixel range). Test crops are the central square.
The randomness of sample k in epoch e comes from (seed, e, k) alone, so the number of loading
threads does not change the inputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.weights import describe_weights
from sppdet.detector.core.config import PretrainConfig, json_ready
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.images import read_image
from sppdet.detector.features.conv5 import resized_size
from sppdet.detector.pretrain.samples import SampleSet

COLOR_SAMPLES = 256  # regions used to estimate the colour statistics
COLOR_SIDE = 64  # they are shrunk to this shorter side first
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> grey (ITU-R 601)

T = TypeVar("T")
R = TypeVar("R")


def load_region(samples: SampleSet, k: int) -> np.ndarray:
    """The pixels (uint8 RGB) of sample K's region; a one-line SppdetError when unreadable."""
    path = samples.paths[int(samples.image[k])]
    try:
        image = read_image(path)
    except SppdetError as exc:
        raise SppdetError(f"{exc}; remove or replace the file and rerun") from None
    h, w = image.shape[:2]
    r = samples.regions[k]
    x1, y1 = int(np.clip(np.floor(r[0]), 0, w - 1)), int(np.clip(np.floor(r[1]), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(r[2]), x1, w - 1)), int(np.clip(np.ceil(r[3]), y1, h - 1))
    return image[y1 : y2 + 1, x1 : x2 + 1]


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (area averaging when shrinking, bilinear when enlarging); a no-op at equal size."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def resize_min_side(image: np.ndarray, side: int) -> np.ndarray:
    """IMAGE resized so its shorter side is SIDE, aspect kept."""
    h, w = resized_size(image.shape[0], image.shape[1], side, None)
    return resize_to(image, w, h)


def crop_side(height: int, width: int, fraction: float) -> int:
    return max(1, round(fraction * min(height, width)))


def center_crop(image: np.ndarray, fraction: float, size: int) -> np.ndarray:
    """The central square of side FRACTION * shorter side, resized to SIZE x SIZE."""
    h, w = image.shape[:2]
    c = crop_side(h, w, fraction)
    y0, x0 = (h - c) // 2, (w - c) // 2
    return resize_to(image[y0 : y0 + c, x0 : x0 + c], size, size)


def random_crop(
    image: np.ndarray, fraction: float, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A square of side FRACTION * shorter side at a uniform random place, resized to SIZE."""
    h, w = image.shape[:2]
    c = crop_side(h, w, fraction)
    y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    return resize_to(image[y0 : y0 + c, x0 : x0 + c], size, size)


@dataclass(frozen=True)
class ColorStats:
    """RGB pixel statistics (0-255) of the training regions: mean, std and principal axes."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eigval: tuple[float, float, float]  # variances along the principal axes, largest first
    eigvec: tuple[tuple[float, float, float], ...]  # columns are the axes (RGB)

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ColorStats:
        return cls(
            tuple(obj["mean"]),
            tuple(obj["std"]),
            tuple(obj["eigval"]),
            tuple(tuple(r) for r in obj["eigvec"]),
        )  # type: ignore[arg-type]

    @classmethod
    def from_moments(cls, total: np.ndarray, outer: np.ndarray, count: int) -> ColorStats:
        mean = total / count
        cov = outer / count - np.outer(mean, mean)
        val, vec = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(val)[::-1]
        val, vec = np.clip(val[order], 0, None), vec[:, order]
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
        return cls(
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std),
            tuple(float(v) for v in val),
            tuple(tuple(float(v) for v in row) for row in vec),
        )  # type: ignore[arg-type]


def estimate_color_stats(
    samples: SampleSet, seed: int, count: int = COLOR_SAMPLES, progress: bool = False
) -> ColorStats:
    """Colour statistics of up to COUNT regions (a seeded choice), each shrunk to COLOR_SIDE."""
    chosen = np.random.default_rng([seed, 17]).permutation(len(samples))[:count]
    total, outer, n = np.zeros(3), np.zeros((3, 3)), 0
    bar = progress_bar(len(chosen), "colour statistics", "img") if progress else nullcontext()
    with bar as b:
        for k in np.sort(chosen):
            region = load_region(samples, int(k))
            small = resize_min_side(region, min(COLOR_SIDE, min(region.shape[:2])))
            pixels = small.reshape(-1, 3).astype(np.float64)
            total += pixels.sum(0)
            outer += pixels.T @ pixels
            n += len(pixels)
            if b is not None:
                b.advance()
    return ColorStats.from_moments(total, outer, n)


def preprocessing_for(arch: str, stats: ColorStats) -> Preprocessing:
    """The trunk's channel order and pixel range, with the training set's mean and std."""
    base = describe_weights(arch, "random")[1]
    mean, std = np.array(stats.mean), np.maximum(np.array(stats.std), 1.0)
    if base.channel_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    scale = 255.0 / base.pixel_range
    return Preprocessing(
        tuple(float(v) for v in mean / scale),  # type: ignore[arg-type]
        tuple(float(v) for v in std / scale),  # type: ignore[arg-type]
        base.channel_order,
        base.pixel_range,
    )


def color_augment(
    image: np.ndarray, rng: np.random.Generator, stats: ColorStats, lighting: float, jitter: float
) -> np.ndarray:
    """Brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER], then AlexNet's
    PCA lighting: a shift along each principal colour axis of N(0, LIGHTING) times the standard
    deviation along it. float32 RGB 0-255 in and out."""
    out = image.astype(np.float32)
    bright, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, 3).astype(np.float32)
    alpha = rng.normal(0.0, lighting, 3)
    out *= bright
    grey = out @ LUMA
    out = (out - grey.mean()) * contrast + grey.mean()
    grey = (out @ LUMA)[..., None]
    out = grey + (out - grey) * saturation
    shift = np.asarray(stats.eigvec) @ (alpha * np.sqrt(np.asarray(stats.eigval)))
    out += shift.astype(np.float32)
    return np.clip(out, 0.0, 255.0)


class RegionImages:
    """Network inputs [3, size, size] of samples ORDER: training crops (random place, flip, colour;
    the randomness of sample k in epoch e comes from (seed, e, k)) or the centre crop.

    An unreadable image yields its message instead of raising, so the training loop stops with
    that one line, whichever loading thread met it.
    """

    def __init__(
        self,
        samples: SampleSet,
        order: np.ndarray,
        size: int,
        pre: Preprocessing,
        fraction: float,
        augment: tuple[int, int, ColorStats, PretrainConfig] | None = None,
    ) -> None:
        self.samples, self.order, self.size, self.pre = samples, np.asarray(order), size, pre
        self.fraction, self.augment = fraction, augment

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        k = int(self.order[i])
        label = int(self.samples.labels[k])
        try:
            region = load_region(self.samples, k)
        except SppdetError as exc:
            return torch.zeros(3, self.size, self.size), label, str(exc)
        if self.augment is None:
            return self.pre(center_crop(region, self.fraction, self.size))[0], label, ""
        seed, epoch, stats, cfg = self.augment
        rng = np.random.default_rng([seed, epoch, k])
        crop = random_crop(region, self.fraction, self.size, rng)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = color_augment(crop, rng, stats, cfg.lighting_std, cfg.color_jitter)
        return self.pre(np.ascontiguousarray(crop))[0], label, ""


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """FN over ITEMS in order, computed WORKERS at a time in threads (decoding and resizing
    release the GIL), at most 2 * WORKERS ahead of the consumer; inline when WORKERS is 0.

    Threads rather than processes: a process forked from a parent whose OpenCV or OpenMP pools
    are running can deadlock, and spawned processes would re-import torch every epoch.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sppdet-pretrain") as pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def batches(
    dataset: RegionImages, batch_size: int, workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(inputs [B, 3, s, s], labels [B], load errors) in dataset order."""
    starts = range(0, len(dataset), batch_size)

    def make(start: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, labels, errors = zip(*items, strict=True)
        return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64), list(errors)

    return ordered_map(make, starts, workers)


def raise_load_errors(errors: Sequence[str]) -> None:
    bad = [e for e in errors if e]
    if bad:
        raise SppdetError(bad[0])
