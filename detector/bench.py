"""``sppdet bench``: SPP against R-CNN with one trunk, on the same images and windows, in one
process (the paper's section 4.2 and Table 10).

Per image, each part is timed on its own (the device synchronised before and after):

    proposals    the configured method on the decoded image
    rcnn_conv    R-CNN: warp every window (16 px context) and run conv1-5 + pool5 on it, batched
    rcnn_fc      fc6-fc7 on the R-CNN pool5 features
    spp_conv_1   SPP: resize to the 1-scale setting and run conv1-5 once
    spp_pool_1   window -> cells at that scale and spatial pyramid pooling of all windows
    spp_conv_5   the same at the 5 scales
    spp_pool_5   best scale per window, cells and pooling over the 5 maps
    spp_fc       fc6-fc7 on the 5-scale pooled features
    svm          linear SVM scores of every window for every class
    nms          per-class NMS (0.3) of every scored window, the top 100 kept

The SPP side is timed over ``BenchConfig.repeats`` passes and each part's median kept, so that
one pass slowed by other jobs decides no ratio. R-CNN's batches (``RcnnConfig.batch_windows``
windows, about a second each on a CPU) are shared out between the passes and timed one by one, each
pass running its share just before the SPP side, and R-CNN's seconds are the median seconds per
window of its batches, times the windows: both sides of a ratio meet the same load of other jobs,
in samples of similar length. (Timed one after the other, as before, R-CNN's 30-s block and SPP's
0.2-s passes met different loads; BENCHMARKS.md, issue 20.) fc6-fc7 on R-CNN's features runs over
every window at once, as on SPP's, ``repeats`` times.

The windows are the image's proposals, best first, topped up with random boxes (seeded) when the
method gives fewer than ``--windows``: R-CNN's cost depends on the number of windows, not on
where they are. The fc6/fc7 head is the backbone's when it has one, else a random one of the
paper's width (4,096), and the SVMs are random linear scorers over ``svm_classes`` classes: none
of these timings depends on the weights, and every window passes the score threshold, so NMS
is timed at its largest. Speed-ups (paper: 270x and 49x for the convolutions, 102x and 38x with
fc6-fc7):

    conv      rcnn_conv / (spp_conv + spp_pool)
    conv+fc   (rcnn_conv + rcnn_fc) / (spp_conv + spp_pool + spp_fc)

Next to each speed-up stands its work ratio, the same quotient of multiply-adds (``part_macs``:
the convolutions' and fc layers' as torch's ``FlopCounterMode`` counts them, the SVMs' as
windows x features x classes; pooling, warping and NMS count none): if both paths ran every
multiply-add at the same rate, the speed-up would be the work ratio, so their quotient says how
much faster or slower per multiply-add the SPP side runs. With ``fc_rank`` (r6, r7) fc6 and fc7
are replaced by their truncated SVDs (``FcHead.compressed``) on both paths alike. ``detect``
sums what detection without proposals costs per image: SPP conv, pooling, fc6-fc7, SVMs, NMS.

With ``--precision bf16|fp16`` the trunk and fc layers run under autocast, and the report says
how far the SVM scores move against float32 on the same windows, and whether the detections
(after NMS) stay the same.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sppdet.detector.backbones.trunk import to_device, trunk_spec
from sppdet.detector.backbones.weights import Backbone, load_backbone
from sppdet.detector.core.config import FeatureConfig, PipelineConfig, RcnnConfig
from sppdet.detector.core.device import autocast, device_input, resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.detection.postprocess import Candidates, select
from sppdet.detector.features.conv5 import resize_to_scales, resized_size
from sppdet.detector.features.rcnn_warp import RcnnFeaturizer
from sppdet.detector.features.reader import ImageInfo
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import COMPRESSIBLE, linear_macs
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.geometry import edge_shift, layer_geometry
from sppdet.detector.spp.pooler import WindowPooler
from sppdet.proposals.methods import propose

PARTS = (
    "proposals",
    "rcnn_conv",
    "rcnn_fc",
    "spp_conv_1",
    "spp_pool_1",
    "spp_conv_5",
    "spp_pool_5",
    "spp_fc",
    "svm",
    "nms",
)
HEAD_SEED = 0
CHECK_RCNN_WINDOWS = 128  # windows of the R-CNN path re-run in float32 for the precision check
# The parts of each speed-up's SPP side, and of detection without proposals, per setting.
SPP_SIDE = {
    "conv": ("spp_conv_{tag}", "spp_pool_{tag}"),
    "conv_fc": ("spp_conv_{tag}", "spp_pool_{tag}", "spp_fc"),
    "detect": ("spp_conv_{tag}", "spp_pool_{tag}", "spp_fc", "svm", "nms"),
}
RCNN_SIDE = {"conv": ("rcnn_conv",), "conv_fc": ("rcnn_conv", "rcnn_fc")}
TAGS = ("1", "5")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionCheck:
    """How far mixed precision moves the SVM scores from float32 on the same windows."""

    spp_max_abs_score_diff: float
    spp_mean_abs_score_diff: float
    score_std: float  # of the float32 scores: the scale the differences compare with
    rcnn_max_abs_score_diff: float  # on the first CHECK_RCNN_WINDOWS windows of the R-CNN path
    same_detections: float  # Jaccard index of the detections after NMS: 1.0 = identical

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImageBench:
    """One timed image: its windows and proposals, seconds per part, the precision check."""

    image_id: str
    windows: int
    proposals: int  # given by the proposal method; the rest of the windows are random boxes
    seconds: dict[str, float]  # per part of PARTS
    check: PrecisionCheck | None  # with --precision bf16 or fp16 only
    macs: dict[str, int] = field(default_factory=dict)  # per part of PARTS (``part_macs``)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"windows": self.windows, "proposals": self.proposals}
        if self.check is not None:
            out["check"] = self.check.to_json()
        return {**out, "image_id": self.image_id, "seconds": self.seconds, "macs": self.macs}


@dataclass(frozen=True)
class BenchReport:
    """``sppdet bench``'s report: the setting, every image, mean seconds and multiply-adds per
    image and part, the paper's speed-ups with their work ratios, detection's seconds per image
    and (mixed precision) the worst and mean precision check."""

    backbone: str
    weights: str
    device: str
    device_name: str
    threads: int
    precision: str
    pooling: list[str]  # the pooling paths used (native, torch)
    windows: int
    one_scale: tuple[int, ...]
    five_scales: tuple[int, ...]
    proposal_method: str
    images: list[ImageBench]
    per_image: dict[str, float]
    speedup: dict[str, float]
    check: PrecisionCheck | None
    fc_rank: tuple[int, ...] | None = None  # fc6/fc7 truncated to these ranks (None: full)
    macs: dict[str, float] = field(default_factory=dict)  # mean per image, per part
    work_ratio: dict[str, float] = field(default_factory=dict)  # per speed-up, of the MACs
    bound: dict[str, float] = field(default_factory=dict)  # per speed-up (``bounds``)
    detect: dict[str, float] = field(default_factory=dict)  # s/image without proposals, per tag

    @property
    def gflops(self) -> dict[str, float]:
        """Achieved GFLOP/s (2 per multiply-add) of each part that has multiply-adds."""
        return {
            part: 2e-9 * macs / self.per_image[part]
            for part, macs in self.macs.items()
            if macs > 0 and self.per_image[part] > 0
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON report (bench.json): the fields, the images and checks as plain dicts."""
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads,
            "precision": self.precision,
            "pooling": self.pooling,
            "windows": self.windows,
            "one_scale": list(self.one_scale),
            "five_scales": list(self.five_scales),
            "proposal_method": self.proposal_method,
            "images": [image.to_json() for image in self.images],
            "per_image": self.per_image,
            "speedup": self.speedup,
            "check": None if self.check is None else self.check.to_json(),
            "fc_rank": None if self.fc_rank is None else list(self.fc_rank),
            "macs": self.macs,
            "gflops": self.gflops,
            "work_ratio": self.work_ratio,
            "bound": self.bound,
            "detect": self.detect,
        }


@dataclass
class Bench:
    """The trunk, head and scorer shared by both paths, on one device."""

    backbone: Backbone
    head: FcHead
    svm_weights: torch.Tensor  # [K, D7]
    cfg: PipelineConfig
    device: torch.device
    precision: str
    # Per setting (1 or 5 scales): a pooler and an output buffer kept across images, as a
    # detector serving many images would, so the timing excludes first-touch page faults.
    poolers: dict[str, WindowPooler] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    trunk_macs: dict[tuple[int, int], int] = field(default_factory=dict)  # per input (h, w)

    @property
    def pyramid(self) -> tuple[int, ...]:
        return check_pyramid(self.cfg.spp.pyramid)


def make_bench(
    features: FeatureConfig,
    cfg: PipelineConfig,
    precision: str,
    fc_rank: Sequence[int] | None = None,
) -> Bench:
    """The trunk on the device, the head (the backbone's fc6/fc7 or a random one; compressed to
    FC_RANK when given) and random unit-norm SVMs."""
    device = resolve_device(features.device)
    backbone = load_backbone(features.backbone, features.weights)
    backbone.trunk = to_device(backbone.trunk, device)
    pyramid = check_pyramid(cfg.spp.pyramid)
    state = backbone.head_state(pyramid)
    hidden = int(state["fc7.weight"].shape[0]) if "fc7.weight" in state else cfg.finetune.fc_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        head = FcHead(pyramid_dim(pyramid, backbone.channels), hidden, 2, 0.0)
        head.load_state_dict(state, strict=False)
        weights = torch.randn(cfg.bench.svm_classes, hidden)
    weights /= weights.norm(dim=1, keepdim=True)
    if fc_rank:
        start = time.perf_counter()
        head = head.compressed(fc_rank)
        log.info(
            "bench: fc6/fc7 truncated to ranks %s in %.1f s", fc_rank, time.perf_counter() - start
        )
    return Bench(backbone, head.to(device).eval(), weights.to(device), cfg, device, precision)


def trunk_macs(bench: Bench, height: int, width: int) -> int:
    """Multiply-adds of one pass of the bench's trunk over a HEIGHT x WIDTH image, as torch's
    ``FlopCounterMode`` counts them (convolutions and matrix products; a FLOP is half a
    multiply-add), on a copy of the trunk on the meta device: shapes only, no arithmetic."""
    key = (int(height), int(width))
    if key not in bench.trunk_macs:
        meta = copy.deepcopy(bench.backbone.trunk).to("meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(torch.empty(1, 3, *key, device="meta"))
        bench.trunk_macs[key] = int(counter.get_total_flops()) // 2
    return bench.trunk_macs[key]


def head_macs(head: FcHead) -> int:
    """Multiply-adds of fc6 and fc7 for one window."""
    return sum(linear_macs(getattr(head, name)) for name in COMPRESSIBLE)


def part_macs(bench: Bench, height: int, width: int, windows: int, warp: int) -> dict[str, int]:
    """Multiply-adds per part (of PARTS) for WINDOWS windows of a HEIGHT x WIDTH image: R-CNN
    runs the trunk on each WARP x WARP crop, SPP once per scale on the resized image; both run
    fc6-fc7 per window, and the SVMs cost features x classes per window. Proposals, warping,
    pooling and NMS have no multiply-adds."""
    cfg = bench.cfg
    out = dict.fromkeys(PARTS, 0)
    out["rcnn_conv"] = windows * trunk_macs(bench, warp, warp)
    for tag in TAGS:
        scales = cfg.bench.one_scale if tag == "1" else cfg.bench.five_scales
        sizes = [resized_size(height, width, s, cfg.features.max_size) for s in scales]
        out[f"spp_conv_{tag}"] = sum(trunk_macs(bench, h, w) for h, w in sizes)
    out["rcnn_fc"] = out["spp_fc"] = windows * head_macs(bench.head)
    out["svm"] = windows * int(bench.svm_weights.numel())
    return out


class Timer:
    """Seconds per named part, with the device synchronised around each, by CLOCK: wall time,
    or ``time.process_time`` (the CPU seconds of every thread of this process: on a machine
    shared with other jobs, what a part costs rather than how long it waited)."""

    def __init__(
        self, device: torch.device, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self._sync()
        start = self.clock()
        yield
        self._sync()
        self.seconds[part] = self.seconds.get(part, 0.0) + self.clock() - start


def bench_windows(
    proposals: np.ndarray, count: int, height: int, width: int, seed: int
) -> np.ndarray:
    """COUNT windows float32 [N, 4]: the proposals, topped up with random boxes if too few."""
    boxes = np.asarray(proposals, np.float32).reshape(-1, 4)[:count]
    missing = count - len(boxes)
    if missing <= 0:
        return boxes
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(16), np.log(max(width, 17)), missing))
    h = w * np.exp(rng.uniform(np.log(1 / 3), np.log(3), missing))
    w, h = np.minimum(w, width), np.minimum(h, height)
    x1 = rng.uniform(0, width - w + 1e-6)
    y1 = rng.uniform(0, height - h + 1e-6)
    extra = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1).round()
    extra = np.clip(extra, 0, [width - 1, height - 1, width - 1, height - 1])
    return np.concatenate([boxes, extra.astype(np.float32)])


def spp_pool5(
    bench: Bench,
    rgb: np.ndarray,
    boxes: np.ndarray,
    scales: Sequence[int],
    timer: Timer,
    tag: str,
    precision: str,
) -> torch.Tensor:
    """SPP pool5 [N, D] (device, float32) of BOXES at their best of SCALES; timed as conv and
    pool parts."""
    trunk, pre, device = bench.backbone.trunk, bench.backbone.preprocessing, bench.device
    with timer(f"spp_conv_{tag}"), torch.inference_mode(), autocast(device, precision):
        resized = resize_to_scales(rgb, scales, bench.cfg.features.max_size)
        maps = []
        for image in resized:
            maps.append(trunk(device_input(pre(image, device)))[0])
    with timer(f"spp_pool_{tag}"), torch.inference_mode():
        sizes = np.array([m.shape[1:] for m in maps], np.int64)
        info = ImageInfo(  # what the cache records per image, here from the maps in memory
            *rgb.shape[:2],
            np.array([min(r.shape[:2]) for r in resized], np.int64),
            sizes[:, 0],
            sizes[:, 1],
        )
        index = info.best_scale(boxes, bench.cfg.spp)
        geometry = layer_geometry(trunk_spec(bench.backbone.arch)[1])
        shift = edge_shift(bench.cfg.spp.window_mapping, geometry)
        cells = info.cells(boxes, index, geometry, shift)
        dim = pyramid_dim(bench.pyramid, bench.backbone.channels)
        out = bench.outputs.get(tag)
        if out is None or out.shape[0] < len(boxes) or out.device != device:
            out = bench.outputs[tag] = torch.empty(len(boxes), dim, device=device)
        pooler = bench.poolers.setdefault(tag, WindowPooler())
        pooled = pooler.pool(maps, cells, bench.pyramid, map_index=index, out=out)
    return pooled


def fc7(bench: Bench, pool5: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), autocast(bench.device, precision):
        return bench.head.features(pool5, "fc7").float()


def svm_scores(bench: Bench, features: torch.Tensor) -> torch.Tensor:
    """Scores [N, K] of the random linear SVMs, on features scaled to the SVM stage's norm."""
    with torch.inference_mode():
        norm = features.norm(dim=1).mean().clamp_min(1e-12)
        return (features * (bench.cfg.svm.feature_norm / norm)) @ bench.svm_weights.T


def detections(bench: Bench, boxes: np.ndarray, scores: torch.Tensor) -> Candidates:
    """Every (window, class) scored, then per-class NMS and the top 100 (the detect stage)."""
    values = scores.float().cpu().numpy()
    rows, labels = np.nonzero(np.ones_like(values, dtype=bool))
    candidates = Candidates(
        boxes[rows], boxes[rows], values[rows, labels].astype(np.float32), labels.astype(np.int64)
    )
    return select(candidates, bench.cfg.detect)


def _same_detections(a: Candidates, b: Candidates) -> float:
    """Jaccard index of two detection sets as (class, box) pairs: 1.0 = identical."""
    keys_a = {(int(c), *map(float, box)) for c, box in zip(a.labels, a.boxes, strict=True)}
    keys_b = {(int(c), *map(float, box)) for c, box in zip(b.labels, b.boxes, strict=True)}
    union = keys_a | keys_b
    return len(keys_a & keys_b) / len(union) if union else 1.0


def bench_image(
    bench: Bench,
    image_id: str,
    rgb: np.ndarray,
    seed: int,
    featurizer: RcnnFeaturizer,
    timer: Timer,
) -> ImageBench:
    """Time every part on one image (adding to TIMER), and check mixed precision against fp32."""
    before = dict(timer.seconds)
    height, width = rgb.shape[:2]
    cfg = bench.cfg
    with timer("proposals"):
        proposals = propose(rgb, dataclasses.replace(cfg.proposals, max_boxes=cfg.bench.windows))
    boxes = bench_windows(proposals, cfg.bench.windows, height, width, seed)
    image = featurizer.prepare(rgb)
    passes: dict[str, list[float]] = {}
    chunks, per_window = [], []
    batches = featurizer.batches(boxes)
    # Each pass runs its share of R-CNN's batches, each timed alone, then the whole SPP side:
    # both sides meet the same load of other jobs, in samples of similar length.
    for share in np.array_split(np.arange(len(batches)), max(1, cfg.bench.repeats)):
        for k in share:
            rcnn = Timer(bench.device, timer.clock)
            with rcnn("rcnn_conv"):
                chunks.append(featurizer.pool5(image, batches[k]))
            per_window.append(rcnn.seconds["rcnn_conv"] / len(batches[k]))
        spp = Timer(bench.device, timer.clock)
        spp_pool5(bench, rgb, boxes, cfg.bench.one_scale, spp, "1", bench.precision)
        pool5 = spp_pool5(bench, rgb, boxes, cfg.bench.five_scales, spp, "5", bench.precision)
        with spp("spp_fc"):
            features = fc7(bench, pool5, bench.precision)
        with spp("svm"):
            scores = svm_scores(bench, features)
        with spp("nms"):
            found = detections(bench, boxes, scores)
        for part, seconds in spp.seconds.items():
            passes.setdefault(part, []).append(seconds)
    passes["rcnn_conv"] = [float(np.median(per_window)) * len(boxes)]
    rcnn_pool5 = torch.cat(chunks)
    for _ in range(max(1, cfg.bench.repeats)):  # on every window at once, as spp_fc
        rcnn = Timer(bench.device, timer.clock)
        with rcnn("rcnn_fc"):
            fc7(bench, rcnn_pool5, bench.precision)
        passes.setdefault("rcnn_fc", []).append(rcnn.seconds["rcnn_fc"])
    for part, seconds in passes.items():
        timer.seconds[part] = timer.seconds.get(part, 0.0) + float(np.median(seconds))
    seconds = {p: timer.seconds[p] - before.get(p, 0.0) for p in PARTS}
    check = None
    if bench.precision != "fp32":
        check = precision_check(bench, rgb, boxes, scores, found, rcnn_pool5)
    macs = part_macs(bench, height, width, len(boxes), featurizer.size)
    return ImageBench(image_id, len(boxes), int(len(proposals)), seconds, check, macs)


def precision_check(
    bench: Bench,
    rgb: np.ndarray,
    boxes: np.ndarray,
    scores: torch.Tensor,
    found: Candidates,
    rcnn_pool5: torch.Tensor,
) -> PrecisionCheck:
    """How far mixed precision moves the 5-scale SPP scores (and those of the first windows of
    the R-CNN path) from float32, and how many detections stay the same."""
    scratch = Timer(bench.device)
    pool5 = spp_pool5(bench, rgb, boxes, bench.cfg.bench.five_scales, scratch, "5", "fp32")
    exact = svm_scores(bench, fc7(bench, pool5, "fp32"))
    delta = (scores - exact).abs()
    fp32 = dataclasses.replace(bench.cfg.rcnn, precision="fp32")
    reference = RcnnFeaturizer(bench.backbone, bench.pyramid, fp32, bench.device)
    few = boxes[:CHECK_RCNN_WINDOWS]
    rcnn_exact = svm_scores(bench, fc7(bench, reference.pool5(reference.prepare(rgb), few), "fp32"))
    rcnn_mixed = svm_scores(bench, fc7(bench, rcnn_pool5[: len(few)], bench.precision))
    return PrecisionCheck(
        spp_max_abs_score_diff=float(delta.max()),
        spp_mean_abs_score_diff=float(delta.mean()),
        score_std=float(exact.std()),
        rcnn_max_abs_score_diff=float((rcnn_mixed - rcnn_exact).abs().max()),
        same_detections=_same_detections(found, detections(bench, boxes, exact)),
    )


def run_bench(
    dataset: Dataset,
    features: FeatureConfig,
    cfg: PipelineConfig,
    precision: str = "fp32",
    progress: bool = True,
    fc_rank: Sequence[int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchReport:
    """Time both paths on the first ``cfg.bench.images`` images of DATASET; the report's
    ``per_image`` holds mean seconds per image, ``speedup`` the ratios. FC_RANK (r6, r7)
    truncates fc6 and fc7 of the head both paths share; CLOCK times the parts (``Timer``)."""
    records = _bench_records(dataset, cfg)
    bench = make_bench(features, cfg, precision, fc_rank)
    rcnn_cfg: RcnnConfig = dataclasses.replace(cfg.rcnn, precision=precision)
    featurizer = RcnnFeaturizer(bench.backbone, bench.pyramid, rcnn_cfg, bench.device)
    _warm_up(bench, featurizer, read_image(records[0].path))
    timer = Timer(bench.device, clock)
    images: list[ImageBench] = []
    with progress_bar(len(records), "bench", "img") if progress else nullcontext() as bar:
        for k, record in enumerate(records):
            rgb = read_image(record.path)
            images.append(bench_image(bench, record.image_id, rgb, k, featurizer, timer))
            if bar is not None:
                bar.advance()
    per_image = {p: timer.seconds[p] / len(records) for p in PARTS}
    macs = {p: float(np.mean([image.macs[p] for image in images])) for p in PARTS}
    return BenchReport(
        backbone=features.backbone,
        weights=bench.backbone.weights_id,
        device=str(bench.device),
        device_name=_device_name(bench.device),
        threads=torch.get_num_threads(),
        precision=precision,
        pooling=sorted({str(pooler.last_path) for pooler in bench.poolers.values()}),
        windows=cfg.bench.windows,
        one_scale=tuple(cfg.bench.one_scale),
        five_scales=tuple(cfg.bench.five_scales),
        proposal_method=cfg.proposals.method,
        images=images,
        per_image=per_image,
        speedup=speedups(per_image),
        check=_mean_check([im.check for im in images if im.check is not None]),
        fc_rank=tuple(int(r) for r in fc_rank) if fc_rank else None,
        macs=macs,
        work_ratio=speedups(macs),
        bound=bounds(per_image, macs),
        detect={tag: side_total(per_image, "detect", tag) for tag in TAGS},
    )


def _bench_records(dataset: Dataset, cfg: PipelineConfig) -> list[ImageRecord]:
    """The images to time: the first ``cfg.bench.images`` of DATASET, the settings checked."""
    count = cfg.bench.images
    if count < 1:
        raise SppdetError(f"--images {count}: give 1 or more")
    if cfg.bench.windows < 1:
        raise SppdetError(f"--windows {cfg.bench.windows}: give 1 or more")
    records = dataset.records[:count]
    if not records:
        raise SppdetError(f"split {dataset.split!r} of {dataset.name} has no images")
    return list(records)


def side_total(per_image: dict[str, float], side: str, tag: str) -> float:
    """Seconds (or multiply-adds) of SIDE's SPP parts (``SPP_SIDE``) at setting TAG."""
    return sum(per_image[part.format(tag=tag)] for part in SPP_SIDE[side])


def speedups(per_image: dict[str, float]) -> dict[str, float]:
    """The paper's ratios from mean seconds per image (or, as work ratios, multiply-adds)."""
    ratios = {}
    for tag in TAGS:
        for side, rcnn_parts in RCNN_SIDE.items():
            rcnn = sum(per_image[part] for part in rcnn_parts)
            ratios[f"{side}_{tag}_scale"] = rcnn / side_total(per_image, side, tag)
    return ratios


def bounds(per_image: dict[str, float], macs: dict[str, float]) -> dict[str, float]:
    """Per speed-up, the ratio the multiply-adds and the measured rates set: R-CNN's seconds if
    it ran its convolutions at the rate SPP's ran at that setting (multiply-adds per second of
    ``spp_conv``) and its fc6-fc7 at SPP's fc rate, over SPP's measured seconds (pooling
    included). A speed-up above its bound means R-CNN's path ran slower per multiply-add than
    SPP's; below, SPP's ran slower (its pooling, or smaller maps)."""
    fc_rate = macs["spp_fc"] / per_image["spp_fc"]
    out = {}
    for tag in TAGS:
        conv_rate = macs[f"spp_conv_{tag}"] / per_image[f"spp_conv_{tag}"]
        rcnn_conv = macs["rcnn_conv"] / conv_rate
        out[f"conv_{tag}_scale"] = rcnn_conv / side_total(per_image, "conv", tag)
        rcnn = rcnn_conv + macs["rcnn_fc"] / fc_rate
        out[f"conv_fc_{tag}_scale"] = rcnn / side_total(per_image, "conv_fc", tag)
    return out


def spp_shares(per_image: dict[str, float], side: str, tag: str) -> dict[str, float]:
    """Each part's share of the SPP side's seconds of a speed-up (or of detection): the largest
    is what bounds the speed-up."""
    total = side_total(per_image, side, tag)
    return {
        part.format(tag=tag): per_image[part.format(tag=tag)] / total for part in SPP_SIDE[side]
    }


def _mean_check(checks: list[PrecisionCheck]) -> PrecisionCheck | None:
    """The precision checks of all images: the worst of the maxima, the mean of the rest."""
    if not checks:
        return None
    return PrecisionCheck(
        spp_max_abs_score_diff=max(c.spp_max_abs_score_diff for c in checks),
        spp_mean_abs_score_diff=float(np.mean([c.spp_mean_abs_score_diff for c in checks])),
        score_std=float(np.mean([c.score_std for c in checks])),
        rcnn_max_abs_score_diff=max(c.rcnn_max_abs_score_diff for c in checks),
        same_detections=float(np.mean([c.same_detections for c in checks])),
    )


def _warm_up(bench: Bench, featurizer: RcnnFeaturizer, rgb: np.ndarray) -> None:
    """One untimed pass of every kernel (allocator, oneDNN/cuDNN algorithm choice) and of the
    SPP buffers, at full size."""
    boxes = bench_windows(np.zeros((0, 4)), bench.cfg.bench.windows, *rgb.shape[:2], seed=0)
    scratch = Timer(bench.device)
    featurizer.pool5(featurizer.prepare(rgb), boxes[: bench.cfg.rcnn.batch_windows])
    for tag, scales in (("1", bench.cfg.bench.one_scale), ("5", bench.cfg.bench.five_scales)):
        pool5 = spp_pool5(bench, rgb, boxes, scales, scratch, tag, bench.precision)
        svm_scores(bench, fc7(bench, pool5, bench.precision))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
