"""``pretrain``: train a conv trunk with an SPP layer as an image classifier (paper §2.3, §3).

Data. An image-folder tree (one folder per class; ``DATA/<split>/`` when that folder exists, else
``DATA`` itself) or a detection dataset (VOC tree or COCO JSON), which becomes K+1 classes: the
ground-truth objects (difficult ones left out) and ``bg_per_image`` background boxes per image,
drawn at random sizes and places with IoU < 0.3 to every object (class 0, "background"). A sample
is a region of an image: the whole image, or a box grown by 1/crop_fraction around its centre,
so that the centre crop of the region is about the box itself.

Training (paper §3.1). A square crop of side ``crop_fraction`` (224/256) of the region's shorter
side at a random place, resized to the epoch's input size, flipped with probability 1/2, colour
altered (AlexNet's PCA lighting plus brightness/contrast/saturation factors), normalised with the
training set's per-channel mean and standard deviation (recorded as the checkpoint's
preprocessing, in the trunk's channel order and pixel range). conv1-5, SPP over the whole conv5
map (``spp.image_spp``), fc6/fc7 with dropout and fc8 (``heads.FcHead``). SGD with momentum and
weight decay; the learning rate is divided by 10 when the held-out error (or loss) has not
improved for ``plateau_patience`` epochs, at most ``max_lr_drops`` times. Every tenth image (with
its crops) is held out for that test; it is evaluated on the centre crop at the largest size,
and with several training sizes the test runs at the end of each cycle through them.

Multi-size training (§2.3) is "networks sharing parameters": epoch e runs every crop at
``sizes[e % len(sizes)]`` (180 and 224 in the paper), the same region resized, so sizes differ in
resolution only. The SPP output has the same length at every size, so all sizes share fc6.

Reproducibility and resume. Every random choice of epoch e is a function of (seed, e, sample):
the order from (seed, e), crops, flips and colours from (seed, e, sample index), dropout from the
torch generator reseeded at the start of each epoch. Data-loading threads therefore do not
change the result, the same seed gives the same weights twice on a CPU, and the resume state
written (atomically) after every epoch lets an interrupted run restart its unfinished epoch and
end with the weights an uninterrupted run would have. The state holds the model, the optimizer
(momentum), the plateau counters, the colour statistics and the history; its settings
fingerprint covers the data and every setting except ``epochs``, ``workers`` and ``device``, so
the same command resumes, a longer ``--epochs`` continues, and other settings are refused.

Output. A backbone checkpoint (``nets.save_backbone_checkpoint``: conv1-5, fc6, fc7, pyramid,
preprocessing) that ``cache-features --weights`` and fine-tuning read as is, plus one key the
backbone format passes through, ``classifier``: the class names, fc8, and the training record
that ``classify-eval`` needs.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sppdet.cache.atomic import TMP_MARK, atomic_output
from sppdet.cache.fingerprint import differences, fingerprint
from sppdet.detector.boxes import iou_matrix
from sppdet.detector.config import PretrainConfig, as_dict, json_ready
from sppdet.detector.data import IMAGE_SUFFIXES, load_dataset, read_image, voc_root
from sppdet.detector.errors import SppdetError
from sppdet.detector.featurize import resized_size
from sppdet.detector.heads import FcHead
from sppdet.detector.nets import (
    Preprocessing,
    Trunk,
    build_trunk,
    check_arch,
    describe_weights,
    resolve_device,
    save_backbone_checkpoint,
)
from sppdet.detector.progress import progress_bar
from sppdet.detector.spp import check_pyramid, image_spp, pyramid_dim

BACKGROUND = "background"
STATE_FORMAT = "sppdet-pretrain-state"
STATE_VERSION = 1
CLASSIFIER_KEY = "classifier"  # the extra checkpoint entry classify-eval reads
PLATEAU_METRICS = ("error", "loss")
COLOR_SAMPLES = 256  # regions used to estimate the colour statistics
COLOR_SIDE = 64  # they are shrunk to this shorter side first
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> grey (ITU-R 601)
BG_CANDIDATES = 64  # random background boxes tried per image
BG_SIDE_RANGE = (0.15, 0.75)  # background box side / sqrt(image area), log-uniform
BG_ASPECT = 2.0  # background box aspect in [1/2, 2], log-uniform
BG_MIN_SIDE = 16  # pixels
RUN_SETTINGS = ("epochs", "workers", "device")  # settings a resumed run may change
T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------------------------ samples


@dataclass
class SampleSet:
    """Classification samples: regions of images with a class label.

    ``regions`` are inclusive 0-based pixel boxes x1 y1 x2 y2 in the decoded image; an infinite
    x2/y2 reaches the image's edge (the whole image for folder samples). ``image`` indexes
    ``paths``; samples of one image are held out together.
    """

    kind: str  # "folder" | "detection"
    root: str
    classes: tuple[str, ...]  # output names; a detection dataset's start with "background"
    paths: list[Path]
    image: np.ndarray  # [N] int64
    regions: np.ndarray  # [N, 4] float64
    labels: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> SampleSet:
        index = np.asarray(index, np.int64)
        return SampleSet(
            self.kind,
            self.root,
            self.classes,
            self.paths,
            self.image[index],
            self.regions[index],
            self.labels[index],
        )

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, found, strict=True)}

    def describe(self) -> dict[str, Any]:
        """What the fingerprint of a training run covers: the source and a hash of the samples."""
        digest = hashlib.sha256()
        digest.update("\n".join(str(p) for p in self.paths).encode())
        for array in (self.image, self.regions, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {
            "kind": self.kind,
            "root": self.root,
            "classes": list(self.classes),
            "samples": len(self),
            "hash": digest.hexdigest()[:16],
        }


def load_samples(
    data: str | Path,
    split: str,
    cfg: PretrainConfig,
    classes: Sequence[str] | None = None,
    require_all: bool = True,
    seed: int | None = None,
) -> SampleSet:
    """The samples of DATA's SPLIT: an image-folder tree, or crops of a detection dataset.

    CLASSES fixes the class list (an evaluation passes the checkpoint's, background included for
    a detection dataset); REQUIRE_ALL makes a class without samples an error (training).
    """
    data = Path(data)
    if data.suffix.lower() == ".json" or _is_voc(data):
        names = [c for c in classes if c != BACKGROUND] if classes is not None else None
        return detection_samples(data, split, cfg, names, require_all, seed)
    if data.is_dir():
        return folder_samples(data, split, classes, require_all)
    raise SppdetError(
        f"{data}: not found; pass --data an image-folder tree (one folder per class), a VOC "
        "root or a COCO .json"
    )


def _is_voc(data: Path) -> bool:
    try:
        voc_root(data)
    except SppdetError:
        return False
    return True


def _image_files(folder: Path) -> list[Path]:
    suffixes = {s.lower() for s in IMAGE_SUFFIXES} | {".tif", ".tiff", ".webp"}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def folder_samples(
    data: Path, split: str, classes: Sequence[str] | None = None, require_all: bool = True
) -> SampleSet:
    """One sample per image file of ``TREE/<class>/...``; TREE is DATA/SPLIT when it exists."""
    tree = data / split if (data / split).is_dir() else data
    folders = sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise SppdetError(
            f"{tree}: no class folders; an image-folder tree holds one sub-folder of images per "
            "class"
        )
    names = tuple(classes) if classes is not None else tuple(d.name for d in folders)
    index = {name: i for i, name in enumerate(names)}
    unknown = [d.name for d in folders if d.name not in index]
    if unknown:
        raise SppdetError(
            f"{tree}: class folders {unknown} are not classes of the model ({', '.join(names)}); "
            "remove them or evaluate a model trained on them"
        )
    if len(names) < 2:
        raise SppdetError(f"{tree}: a classifier needs at least two class folders")
    paths, labels = [], []
    for folder in folders:
        files = _image_files(folder)
        if not files and require_all:
            raise SppdetError(
                f"{folder}: class {folder.name!r} holds no images (.jpg, .png, ...); add images or "
                "remove the folder"
            )
        paths += files
        labels += [index[folder.name]] * len(files)
    if not paths:
        raise SppdetError(f"{tree}: the class folders hold no images")
    n = len(paths)
    regions = np.tile(np.array([0.0, 0.0, np.inf, np.inf]), (n, 1))
    return SampleSet(
        "folder", str(tree), names, paths, np.arange(n), regions, np.asarray(labels, np.int64)
    )


def expand_boxes(boxes: np.ndarray, factor: float, width: int, height: int) -> np.ndarray:
    """Boxes grown FACTOR times around their centres (+1 pixel convention), clipped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = ((b[:, 2:] - b[:, :2] + 1) * factor - 1) / 2
    grown = np.concatenate([centre - half, centre + half], 1)
    return np.clip(grown, 0, np.array([width - 1, height - 1, width - 1, height - 1]))


def sample_background(
    boxes: np.ndarray,
    width: int,
    height: int,
    count: int,
    max_iou: float,
    rng: np.random.Generator,
    candidates: int = BG_CANDIDATES,
) -> np.ndarray:
    """Up to COUNT random boxes [k, 4] with IoU < MAX_IOU to every box of BOXES.

    Sides are log-uniform in BG_SIDE_RANGE of sqrt(width * height) with aspects in [1/2, 2],
    places uniform; the first COUNT candidates that pass are kept (fewer when the objects cover
    the image).
    """
    if count <= 0:
        return np.zeros((0, 4), np.float64)
    lo, hi = np.log(BG_SIDE_RANGE)
    side = np.sqrt(width * height) * np.exp(rng.uniform(lo, hi, candidates))
    aspect = np.exp(rng.uniform(-np.log(BG_ASPECT), np.log(BG_ASPECT), candidates))
    w = np.clip(np.round(side * np.sqrt(aspect)), min(BG_MIN_SIDE, width), width)
    h = np.clip(np.round(side / np.sqrt(aspect)), min(BG_MIN_SIDE, height), height)
    x1 = np.floor(rng.uniform(0, 1, candidates) * (width - w + 1))
    y1 = np.floor(rng.uniform(0, 1, candidates) * (height - h + 1))
    cand = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1)
    if len(boxes):
        cand = cand[iou_matrix(cand, boxes).max(1) < max_iou]
    return cand[:count]


def detection_samples(
    data: Path,
    split: str,
    cfg: PretrainConfig,
    classes: Sequence[str] | None = None,
    require_all: bool = True,
    seed: int | None = None,
) -> SampleSet:
    """Object crops (label k + 1) and background crops (label 0) of a detection dataset."""
    dataset = load_dataset(data, split, classes)
    seed = cfg.seed if seed is None else seed
    context = 1.0 / cfg.crop_fraction
    paths, image, regions, labels = [], [], [], []
    for i, record in enumerate(dataset.records):
        b = record.boxes
        usable = ~record.difficult & (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
        rng = np.random.default_rng([seed, i])
        bg = sample_background(b, record.width, record.height, cfg.bg_per_image, cfg.bg_iou, rng)
        boxes = np.concatenate([b[usable].astype(np.float64), bg])
        if not len(boxes):
            continue
        paths.append(record.path)
        image.append(np.full(len(boxes), len(paths) - 1, np.int64))
        regions.append(expand_boxes(boxes, context, record.width, record.height))
        labels.append(np.r_[record.labels[usable] + 1, np.zeros(len(bg), np.int64)])
    names = (BACKGROUND, *dataset.classes)
    samples = SampleSet(
        "detection",
        str(data),
        names,
        paths,
        np.concatenate(image) if image else np.zeros(0, np.int64),
        np.concatenate(regions) if regions else np.zeros((0, 4)),
        np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
    )
    if require_all:
        empty = [name for name, n in samples.counts().items() if n == 0]
        if empty:
            raise SppdetError(
                f"{data}: split {split!r} has no usable (non-difficult) objects of {empty}; "
                "drop those classes with --classes or use a split that has them"
            )
    if not len(samples):
        raise SppdetError(f"{data}: split {split!r} yields no object or background crops")
    return samples


def holdout_split(samples: SampleSet, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices: the samples of every EVERY-th image are held out (none
    when there are fewer than EVERY images)."""
    index = np.arange(len(samples))
    if every < 2 or len(samples.paths) < every:
        return index, np.zeros(0, np.int64)
    held = samples.image % every == every - 1
    return index[~held], index[held]


# ---------------------------------------------------------------------------- image handling


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


# -------------------------------------------------------------------------------------- model


class SppClassifier(nn.Module):
    """conv1-5 -> whole-map SPP -> fc6, fc7 (dropout) -> fc8: an SPP-net for any input size."""

    def __init__(self, trunk: Trunk, pyramid: Sequence[int], head: FcHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.pyramid = check_pyramid(pyramid)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(image_spp(self.trunk(x), self.pyramid))


def build_classifier(
    arch: str,
    num_outputs: int,
    pyramid: Sequence[int],
    fc_dim: int,
    dropout: float,
    seed: int,
    fc8_std: float,
) -> SppClassifier:
    """A randomly initialised classifier, the same for the same SEED.

    Every convolution gets He et al.'s initialisation (normal, std sqrt(2 / fan_in), zero bias),
    which keeps the activation scale through the ReLU trunk: with torchvision's default (AlexNet)
    a trunk trained from scratch without batch normalisation barely moves in the first epochs.
    """
    trunk = build_trunk(arch, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in trunk.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        head = FcHead(pyramid_dim(pyramid, trunk.out_channels), fc_dim, num_outputs, dropout)
    head.init_fc8(fc8_std, torch.Generator().manual_seed(seed + 1))
    return SppClassifier(trunk, pyramid, head)


def check_input_sizes(trunk: Trunk, sizes: Sequence[int]) -> None:
    """Refuse input sizes the trunk cannot run (no conv5 cell left)."""
    with torch.no_grad():
        for size in sizes:
            try:
                ok = min(trunk(torch.zeros(1, 3, size, size)).shape[-2:]) >= 1
            except RuntimeError:
                ok = False
            if not ok:
                raise SppdetError(f"--sizes {size}: too small for the {trunk.arch} trunk")


def check_config(cfg: PretrainConfig) -> None:
    check_arch(cfg.backbone)
    try:
        check_pyramid(cfg.pyramid)
    except ValueError as exc:
        raise SppdetError(f"--pyramid {cfg.pyramid}: {exc}") from None
    problems = [
        (not cfg.sizes or min(cfg.sizes) < 1, f"--sizes {cfg.sizes}: give positive pixel sizes"),
        (cfg.epochs < 1, f"--epochs {cfg.epochs}: must be at least 1"),
        (cfg.batch_size < 1, f"--batch-size {cfg.batch_size}: must be at least 1"),
        (cfg.base_lr <= 0, f"--lr {cfg.base_lr}: must be positive"),
        (cfg.fc_dim < 1, f"--fc-dim {cfg.fc_dim}: must be at least 1"),
        (not 0 < cfg.crop_fraction <= 1, f"crop_fraction {cfg.crop_fraction}: must be in (0, 1]"),
        (cfg.workers < 0, f"--workers {cfg.workers}: must be 0 or more"),
        (
            cfg.plateau_metric not in PLATEAU_METRICS,
            f"plateau_metric {cfg.plateau_metric!r}: choose error or loss",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise SppdetError(message)


# ----------------------------------------------------------------------------------- training


@dataclass
class Plateau:
    """Learning-rate drops on a plateau: after PATIENCE epochs without a (relative 1e-4)
    improvement of the monitored value, lr *= factor, at most MAX_DROPS times. A step may stand
    for several EPOCHS (a cycle through the training sizes)."""

    lr: float
    best: float = math.inf
    bad_epochs: int = 0
    drops: int = 0

    def step(
        self, value: float, patience: int, factor: float, max_drops: int, epochs: int = 1
    ) -> bool:
        if value < self.best - 1e-4 * abs(self.best) or math.isinf(self.best):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += epochs
        if self.bad_epochs >= patience and self.drops < max_drops:
            self.lr *= factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False


@dataclass
class PretrainResult:
    out: Path
    state: Path
    classes: tuple[str, ...]
    train_counts: dict[str, int]
    heldout: int
    epochs_done: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def state_path(out: str | Path) -> Path:
    """The resume state beside the checkpoint: ``name.pt`` -> ``name.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 29]).generate_state(1)[0])


def predict_center(
    model: SppClassifier,
    samples: SampleSet,
    index: np.ndarray,
    size: int,
    pre: Preprocessing,
    fraction: float,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits [len(index), K] (CPU) of the centre-crop view of the samples INDEX."""
    was_training = model.training
    model.eval()
    out = []
    data = RegionImages(samples, index, size, pre, fraction)
    with torch.inference_mode():
        for images, _, errors in batches(data, batch_size, workers):
            raise_load_errors(errors)
            out.append(model(images.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(samples.classes))


def _settings(cfg: PretrainConfig, samples: SampleSet, split: str) -> dict[str, Any]:
    kept = {k: v for k, v in as_dict(cfg).items() if k not in RUN_SETTINGS}
    return {"pretrain": kept, "split": split, "data": samples.describe()}


def _load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SppdetError(
            f"{path}: unreadable resume state ({reason}); delete it or rerun with --no-resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SppdetError(f"{path}: not a pretrain resume state; delete it or pass another --out")
    if state.get("version") != STATE_VERSION:
        raise SppdetError(f"{path}: resume state version {state.get('version')!r} unsupported")
    if state["fingerprint"] != fingerprint(settings):
        diff = differences(_flatten(settings), _flatten(state["settings"]))
        raise SppdetError(
            f"{path}: resume state made with other settings ({'; '.join(diff[:3])}); rerun with "
            "--no-resume to start over, or choose another --out"
        )
    return state


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def write_checkpoint(
    out: Path,
    model: SppClassifier,
    arch: str,
    pre: Preprocessing,
    classifier: dict[str, Any],
    source: str,
) -> Path:
    """The backbone checkpoint (written by nets.save_backbone_checkpoint) plus the
    ``classifier`` entry, which the backbone format carries through unread."""
    staged = out.with_name(f"{out.name}{TMP_MARK}backbone")
    try:
        save_backbone_checkpoint(
            staged,
            arch,
            model.trunk,
            pre,
            head=model.head,
            head_pyramid=model.pyramid,
            source=source,
        )
        payload = torch.load(staged, map_location="cpu", weights_only=True)
        head = model.head.state_dict()
        payload[CLASSIFIER_KEY] = {
            **classifier,
            "fc8.weight": head["fc8.weight"].detach().cpu().clone(),
            "fc8.bias": head["fc8.bias"].detach().cpu().clone(),
        }
        with atomic_output(out) as tmp:
            torch.save(payload, tmp)
    finally:
        staged.unlink(missing_ok=True)
    return out


def pretrain(
    data: str | Path,
    out: str | Path,
    cfg: PretrainConfig,
    split: str = "trainval",
    classes: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PretrainResult:
    """Train an SPP classifier on DATA's SPLIT and write the checkpoint OUT (module doc).

    LOG receives one line per epoch; ON_BATCH(epoch, batch) runs after every optimizer step.
    """
    start_time = time.perf_counter()
    check_config(cfg)
    say = log or (lambda _: None)
    out = Path(out)
    samples = load_samples(data, split, cfg, classes)
    train_idx, held_idx = holdout_split(samples, cfg.holdout_every)
    settings = _settings(cfg, samples, split)
    state_file = state_path(out)
    state = _load_state(state_file, settings) if resume and state_file.is_file() else None
    device = resolve_device(cfg.device)

    model = build_classifier(
        cfg.backbone,
        len(samples.classes),
        cfg.pyramid,
        cfg.fc_dim,
        cfg.dropout,
        cfg.seed,
        cfg.fc8_init_std,
    )
    check_input_sizes(model.trunk, cfg.sizes)
    if state is not None:
        model.load_state_dict(state["model"])
        stats = ColorStats.from_dict(state["color_stats"])
        plateau = Plateau(**state["plateau"])
        history: list[dict[str, Any]] = list(state["history"])
        done = int(state["epoch"])
        say(f"resuming {state_file} after epoch {done}")
    else:
        stats = estimate_color_stats(samples.subset(train_idx), cfg.seed, progress=progress)
        plateau, history, done = Plateau(cfg.base_lr), [], 0
    pre = preprocessing_for(cfg.backbone, stats)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=plateau.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        foreach=True,  # one fused update: several times faster on a CPU for many small tensors
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    remaining = max(0, cfg.epochs - done)
    bar_context = (
        progress_bar(remaining * len(train_idx), "pretrain", "img")
        if progress and remaining
        else nullcontext()
    )
    with bar_context as bar:
        for epoch in range(done, cfg.epochs):
            t0 = time.perf_counter()
            size = cfg.sizes[epoch % len(cfg.sizes)]
            if bar is not None:
                bar.note(f"pretrain epoch {epoch + 1}/{cfg.epochs} at {size}px")
            for group in optimizer.param_groups:
                group["lr"] = plateau.lr
            torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout masks
            order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)
            data_epoch = RegionImages(
                samples, order, size, pre, cfg.crop_fraction, (cfg.seed, epoch, stats, cfg)
            )
            record = {
                "epoch": epoch + 1,
                "size": size,
                "lr": plateau.lr,
                **_train_epoch(
                    model,
                    optimizer,
                    batches(data_epoch, cfg.batch_size, cfg.workers),
                    device,
                    epoch,
                    bar,
                    on_batch,
                ),
                **_heldout(model, samples, held_idx, pre, cfg, device),
            }
            monitored = record[f"heldout_{cfg.plateau_metric}"] if len(held_idx) else None
            if monitored is None:
                monitored = record["train_loss"]  # no held-out images: the training loss
            # With several sizes the plateau test runs once per cycle through them, so it always
            # compares the model after an epoch at the same size.
            cycle = len(cfg.sizes)
            dropped = (epoch + 1) % cycle == 0 and plateau.step(
                monitored, cfg.plateau_patience, cfg.lr_drop, cfg.max_lr_drops, epochs=cycle
            )
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            _save_state(
                state_file,
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "fingerprint": fingerprint(settings),
                    "settings": settings,
                    "epoch": epoch + 1,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "plateau": asdict(plateau),
                    "color_stats": stats.to_dict(),
                    "history": history,
                },
            )
            say(_epoch_line(record, cfg.epochs, dropped, plateau.lr))

    model.eval()
    epochs = max(done, cfg.epochs)
    classifier = {
        "classes": list(samples.classes),
        "background": samples.kind == "detection",
        "source_kind": samples.kind,
        "fc_dim": cfg.fc_dim,
        "sizes": [int(s) for s in cfg.sizes],
        "crop_fraction": cfg.crop_fraction,
        "bg_per_image": cfg.bg_per_image,
        "bg_iou": cfg.bg_iou,
        "color_stats": stats.to_dict(),
        "epochs": epochs,
        "history": history,
        "fingerprint": fingerprint(settings),
    }
    source = (
        f"sppdet pretrain: {cfg.backbone} on {samples.root} ({split}), sizes "
        f"{','.join(map(str, cfg.sizes))}, {epochs} epochs, seed {cfg.seed}"
    )
    write_checkpoint(out, model, cfg.backbone, pre, classifier, source)
    return PretrainResult(
        out,
        state_file,
        samples.classes,
        samples.subset(train_idx).counts(),
        len(held_idx),
        epochs,
        remaining,
        history,
        time.perf_counter() - start_time,
    )


def _train_epoch(
    model: SppClassifier,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]],
    device: torch.device,
    epoch: int,
    bar: Any,
    on_batch: Callable[[int, int], None] | None,
) -> dict[str, float]:
    """One pass of SGD over the batches of STREAM; mean training loss and accuracy (dropout on)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (images, labels, errors) in enumerate(stream):
        raise_load_errors(errors)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise SppdetError(
                f"pretrain diverged (loss {loss.item()} at epoch {epoch + 1}); lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if bar is not None:
            bar.advance(len(labels))
        if on_batch is not None:
            on_batch(epoch, step)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def _heldout(
    model: SppClassifier,
    samples: SampleSet,
    held_idx: np.ndarray,
    pre: Preprocessing,
    cfg: PretrainConfig,
    device: torch.device,
) -> dict[str, float | None]:
    """Loss and top-1 error of the held-out samples' centre crops at the largest size."""
    if not len(held_idx):
        return {"heldout_loss": None, "heldout_error": None}
    logits = predict_center(
        model,
        samples,
        held_idx,
        max(cfg.sizes),
        pre,
        cfg.crop_fraction,
        cfg.batch_size,
        cfg.workers,
        device,
    )
    target = torch.as_tensor(samples.labels[held_idx])
    return {
        "heldout_loss": F.cross_entropy(logits, target).item(),
        "heldout_error": (logits.argmax(1) != target).float().mean().item(),
    }


def _epoch_line(record: dict[str, Any], epochs: int, dropped: bool, lr: float) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs} at {record['size']}px: lr {record['lr']:g}, train loss "
        f"{record['train_loss']:.4f}, accuracy {record['train_accuracy']:.3f}"
    )
    if record["heldout_loss"] is not None:
        line += f"; held-out loss {record['heldout_loss']:.4f}, error {record['heldout_error']:.3f}"
    line += f"; {record['seconds']:.1f} s"
    return line + (f"; plateau: lr -> {lr:g}" if dropped else "")
