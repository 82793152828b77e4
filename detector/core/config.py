"""Every constant of the pipeline, named once, grouped per stage, with presets.

Defaults follow the released SPP-net code where it differs from the paper (SPEC.md); the ``paper``
preset picks the paper's values, ``quick-cpu`` a set that finishes on two CPU cores and ``demo``
quick-cpu with the shorter fine-tuning of ``sppdet demo``. The CLI builds a ``PipelineConfig``
from a preset and applies its own overrides with ``override``; ``section_from_dict`` rebuilds a
section from the dict a stage recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sppdet.detector.core.errors import SppdetError

PAPER_SCALES_5 = (480, 576, 688, 864, 1200)
RELEASED_SCALES_5 = (480, 576, 688, 874, 1200)
SINGLE_SCALE = (688,)

S = TypeVar("S")  # a config section's class


@dataclass(frozen=True)
class ProposalConfig:
    # Defaults: recall@0.5 >= 0.9 on small crowded objects (BENCHMARKS.md); the released and
    # paper presets use R-CNN's own settings (RCNN_PROPOSALS).
    method: str = "ss-rcnn"  # a name in sppdet.proposals.methods.METHODS
    max_boxes: int = 2000  # per method: ss+eb holds up to twice this (proposals/combined.py)
    # Drop boxes narrower or shorter than this (pixels; for ss-rcnn at its working width). R-CNN
    # drops under 20, which loses the own boxes of objects under 20 px.
    min_side: int = 10
    # ss-fast / ss-quality (OpenCV's switchToSelectiveSearchFast/Quality) work on a downscaled
    # copy: the longer side is capped for speed.
    ss_max_side: int = 500
    # OpenCV's switchToSelectiveSearchFast/Quality: k = base_k + i * inc_k for i < 3 (fast) or 5
    # (quality), Felzenszwalb sigma, and the graph segmentation's default minimum region size.
    ss_base_k: int = 150
    ss_inc_k: int = 150
    ss_sigma: float = 0.8
    ss_min_region: int = 100
    ss_rank_seed: int = 0  # seed of the random factor in the ranking key (proposals/ranking.py)
    # ss-rcnn, R-CNN's fast mode (selective_search_boxes.m): the image resized to this width (0:
    # as it is; narrower images only if ss_rcnn_enlarge, as R-CNN's demo does), Felzenszwalb k in
    # these values with min size = k, sigma ss_sigma.
    ss_rcnn_width: int = 500
    ss_rcnn_enlarge: bool = False
    ss_rcnn_ks: tuple[int, ...] = (50, 100)
    # EdgeBoxes, on a copy whose longer side is capped. alpha (search step) and beta (NMS IoU) are
    # tuned for recall at IoU 0.7 (Zitnick & Dollar's 0.65 / 0.75 find fewer: BENCHMARKS.md).
    eb_max_side: int = 500
    eb_alpha: float = 0.7
    eb_beta: float = 0.8
    eb_min_score: float = 0.01
    eb_max_aspect_ratio: float = 3.0
    eb_min_box_area: float = 1000.0
    # Edge grouping: 1.0 (OpenCV: 0.5) gives fewer, longer edge groups with the built-in edges:
    # faster and a little more recall (BENCHMARKS.md).
    eb_edge_merge_thr: float = 1.0
    eb_cluster_min_mag: float = 1.0
    # The built-in edge detector (proposals/edges.py): Lab gradients at these Gaussian scales,
    # normalised by their local mean over this radius, thinned, then mapped to [0, 1].
    edge_sigmas: tuple[float, ...] = (1.5, 3.0)
    edge_norm_radius: int = 4
    edge_percentile: float = 99.0  # the thinned magnitude at this percentile maps to 1
    edge_gamma: float = 2.0  # power applied after scaling: weak (texture) edges fall below 0.1
    # Images per shard file, the unit of resume and of parallel work: small enough that every
    # worker stays busy to the end of a split (at most one 4-image shard of imbalance).
    shard_size: int = 4


@dataclass(frozen=True)
class FeatureConfig:
    backbone: str = "zf5"
    weights: str = "random"  # imagenet | random | PATH to a checkpoint
    scales: tuple[int, ...] = RELEASED_SCALES_5
    max_size: int = 2000  # cap on the longer side of a resized image (pixels)
    dtype: str = "float16"
    flip: bool = True  # also the mirrored images, which fine-tuning trains on (released code)
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast of the trunk (core.device.autocast)
    shard_size: int = 4


@dataclass(frozen=True)
class SppConfig:
    pyramid: tuple[int, ...] = (1, 2, 3, 6)
    scale_rule: str = "released"  # released | area224
    area_target: int = 224  # the paper's rule: scaled window area closest to 224x224
    released_target_side: int = 13 * 16  # the released code's rule: 208 px, linear in scale
    # Window -> conv5 cells: edges move 6.5 px inward (released code) or stride/2 (paper's
    # Appendix A), then snap to the nearest receptive-field centre (sppdet.detector.spp).
    window_mapping: str = "released"  # released | paper


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RcnnConfig:
    """The R-CNN feature path, for comparison: every window is cropped with context, warped to
    the trunk's input size and run through the whole trunk (R-CNN, Girshick et al. 2014)."""

    context_padding: int = 16  # pixels of warped context around the window (R-CNN's padding)
    warp_size: int | None = None  # None: the backbone's input size (227 for AlexNet, as R-CNN)
    batch_windows: int = 64  # warped windows per forward pass: bounds activation memory
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the trunk (core.device.autocast)
    dtype: str = "float16"  # stored pool5 features
    shard_size: int = 4


@dataclass(frozen=True)
class BenchConfig:
    """``sppdet bench``: the paper's speed comparison (section 4.2, Table 10's cost split)."""

    windows: int = 2000  # windows per image, as in the paper
    images: int = 3
    one_scale: tuple[int, ...] = SINGLE_SCALE
    five_scales: tuple[int, ...] = RELEASED_SCALES_5
    svm_classes: int = 20  # SVMs scored when no trained model is given (PASCAL VOC's 20)
    # Timed passes per image, the median kept: the SPP side's parts take tenths of a second, which
    # a shared machine's load moves by tens of percent from one pass to the next. Each pass also
    # runs its share of R-CNN's batches, timed one by one, so both sides meet the same load.
    repeats: int = 5


@dataclass(frozen=True)
class FinetuneConfig:
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    batch_size: int = 128
    fg_fraction: float = 0.25
    fc8_init_std: float = 0.01
    fc_dim: int = 4096  # fc6/fc7 width when the backbone brings no fc6/fc7 of its own
    random_fc6_input_norm: float = 20.0  # mean input norm for a randomly initialised fc6
    dropout: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on every weight and bias but fc8's bias (released prototxt)
    base_lr: float = 1e-3
    bias_lr_factor: float = 2.0  # biases learn at twice the rate (Caffe blobs_lr 1 and 2)
    lr_steps: tuple[int, ...] = (30_000, 60_000)  # lr drops by lr_gamma at each step
    lr_gamma: float = 0.1
    iterations: int = 200_000
    checkpoint_every: int = 2_000
    log_every: int = 500
    images_per_round: int = 16  # batches of a round come from this many images' cached maps
    max_batches_per_round: int = 64  # bounds the round's pooled features (float16) in memory
    # Fraction of the images held out of training to monitor loss and accuracy on; 0: every
    # image trains (released code). Never a model selection: the last iterate is kept.
    holdout: float = 0.0
    seed: int = 0


# Windows sampled to estimate the input scale of a randomly initialised fc6. Not a FinetuneConfig
# field: that section's fields make the model's fingerprint, which must stay what it was.
RANDOM_FC6_NORM_SAMPLE_WINDOWS = 2_000


@dataclass(frozen=True)
class SvmConfig:
    layer: str = "fc7"  # pool5 | fc6 | fc7
    feature_norm: float = 20.0
    norm_sample_windows: int = 10_000
    neg_iou: float = 0.3
    neg_dedup: str = "cells"  # cells (released code) | iou (paper, > neg_dedup_iou)
    neg_dedup_iou: float = 0.7
    hard_threshold: float = -1.0001
    evict_threshold: float = -1.2
    retrain_every: int = 2_000
    max_cached_negatives: int = 50_000  # per class; bounds memory on VOC-sized data
    C: float = 0.001
    positive_weight: float = 2.0
    bias_feature: float = 10.0
    # liblinear's stopping tolerance and iteration cap for -s 3: its defaults, which the released
    # code runs with (no -e; 1,000 is hard-coded in its dual solver)
    tolerance: float = 0.1
    max_iterations: int = 1_000
    seed: int = 0


# Platt calibration of the SVM margins (train-svm): every CALIBRATION_HOLDOUT_EVERY-th training
# image is held out from an auxiliary SVM, whose detections on those images fit the sigmoid; a
# detection is correct at IoU >= CALIBRATION_IOU with a box of its class (VOC's test). Not
# SvmConfig fields: that section's fields make the SVMs' fingerprint, which must stay what it was.
CALIBRATION_HOLDOUT_EVERY = 5
CALIBRATION_IOU = 0.5


@dataclass(frozen=True)
class BboxConfig:
    min_iou: float = 0.5  # samples need IoU strictly above this
    feature_norm: float = 20.0
    ridge_lambda: float = 4000.0
    # The feature scale's random windows: as many, and the same seed, as SvmConfig's, so that
    # both estimate the pool5 norm on the same windows (the released code's one statistic)
    norm_sample_windows: int = 10_000
    seed: int = 0


@dataclass(frozen=True)
class DetectConfig:
    score_threshold: float = -1.5
    nms_iou: float = 0.3  # NMS on the windows, and again on the regressed boxes (released code)
    max_per_class: int = 100  # per image
    max_per_split_factor: int = 5  # per class over a split: this x images (spp_test.m)


# Scorers of detect's windows: the SVMs' margins (Platt-calibrated for thresholds) or the
# fine-tuned net's softmax. Not DetectConfig fields: those make the candidates' fingerprint.
SCORERS = ("svm", "softmax")
SOFTMAX_SCORE_THRESHOLD = 1e-3  # softmax's pre-NMS cut (the SVMs': DetectConfig.score_threshold)
# The probability a detection needs to be drawn or returned by the Python API by default; the
# results files keep every detection (0), as the evaluation needs them.
DRAW_SCORE_THRESHOLD = 0.5
# detect/export --fc-rank's default fit (to the responses of fc6/fc7): this many proposals of the
# SVMs' training split, drawn evenly over its images with this seed.
FC_RANK_FIT_WINDOWS = 10_000
FC_RANK_FIT_SEED = 0


@dataclass(frozen=True)
class EvalConfig:
    iou_threshold: float = 0.5
    use_07_metric: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    sizes: tuple[int, ...] = (180, 224)
    epochs: int = 30
    batch_size: int = 64
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    plateau_patience: int = 3
    lr_drop: float = 0.1
    bg_iou: float = 0.3
    seed: int = 0
    backbone: str = "zf5"
    weights: str = "random"  # random | PATH to a backbone checkpoint to continue training from
    pyramid: tuple[int, ...] = (1, 2, 3, 6)  # the paper's 4-level pyramid, 50 bins
    fc_dim: int = 4096  # width of fc6 and fc7
    # Training crops are the central/random 224/256 of an image (paper §3.1: 224 crops of images
    # with a 256 shorter side); other sizes resize that region (§2.3 multi-size training).
    crop_fraction: float = 0.875
    bg_per_image: int = 1  # background crops per image of a detection dataset
    lighting_std: float = 0.1  # AlexNet's PCA colour altering, per principal axis
    color_jitter: float = 0.2  # brightness, contrast and saturation factors in [1 - j, 1 + j]
    plateau_metric: str = "error"  # error | loss of the held-out images ("when the error plateaus")
    max_lr_drops: int = 2  # "divided by 10 (twice)"
    holdout_every: int = 10  # every tenth image is held out for the plateau test
    fc8_init_std: float = 0.01
    workers: int = 2  # image-loading threads (they do not change the result)
    device: str = "auto"


@dataclass(frozen=True)
class DemoConfig:
    """``sppdet demo``: its synthetic data set (small images of coloured shapes, so every stage
    fits in minutes on 2 cores) and how many of the test images it draws."""

    images: int = 80
    drawings: int = 6


@dataclass(frozen=True)
class PipelineConfig:
    preset: str = "released"
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spp: SppConfig = field(default_factory=SppConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)
    bbox: BboxConfig = field(default_factory=BboxConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    rcnn: RcnnConfig = field(default_factory=RcnnConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


# R-CNN's fast Selective Search with its 20 px filter: the proposals of the released code and of
# the paper. Narrower images are not enlarged: SPP_net's spp_detect.m and R-CNN's batch script
# (which made the published VOC boxes) search the image as it is; only R-CNN's demo resizes.
RCNN_PROPOSALS = ProposalConfig(method="ss-rcnn", min_side=20)


def _released() -> PipelineConfig:
    return PipelineConfig(preset="released", proposals=RCNN_PROPOSALS)


def _paper() -> PipelineConfig:
    base = PipelineConfig(preset="paper", proposals=RCNN_PROPOSALS)
    return dataclasses.replace(
        base,
        features=dataclasses.replace(base.features, scales=PAPER_SCALES_5),
        spp=dataclasses.replace(base.spp, scale_rule="area224"),
        finetune=dataclasses.replace(
            base.finetune, base_lr=1e-4, lr_steps=(250_000,), iterations=300_000
        ),
        svm=dataclasses.replace(base.svm, neg_dedup="iou"),
    )


def _quick_cpu() -> PipelineConfig:
    base = PipelineConfig(preset="quick-cpu")
    return dataclasses.replace(
        base,
        proposals=dataclasses.replace(base.proposals, max_boxes=500),
        features=dataclasses.replace(base.features, scales=(480,), max_size=1000),
        finetune=dataclasses.replace(
            base.finetune,
            lr_steps=(1_500,),
            iterations=2_000,
            checkpoint_every=500,
            log_every=250,
            fc_dim=1024,
        ),
        svm=dataclasses.replace(base.svm, norm_sample_windows=2_000),
        bbox=dataclasses.replace(base.bbox, norm_sample_windows=2_000),  # the SVMs' windows
        pretrain=dataclasses.replace(base.pretrain, epochs=8, fc_dim=1024),
    )


DEMO_ITERATIONS = 300  # fine-tuning batches: keeps the demo within 10 minutes on 2 cores


def _demo() -> PipelineConfig:
    """quick-cpu with a shorter fine-tuning (the lr drops once, three quarters of the way), sized
    for ``sppdet demo``'s small synthetic images."""
    base = dataclasses.replace(_quick_cpu(), preset="demo")
    return dataclasses.replace(
        base,
        finetune=dataclasses.replace(
            base.finetune, iterations=DEMO_ITERATIONS, lr_steps=(DEMO_ITERATIONS * 3 // 4,)
        ),
    )


PRESETS = {"released": _released, "paper": _paper, "quick-cpu": _quick_cpu, "demo": _demo}


def preset(name: str) -> PipelineConfig:
    """The named preset; an unknown name is a user error listing the choices."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise SppdetError(
            f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def override(section: Any, **changes: Any) -> Any:
    """A copy of one config section with the options the user actually gave (None = not given)."""
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(section, **given)


def as_dict(section: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config section (tuples become lists), for fingerprints and logs."""
    return json_ready(dataclasses.asdict(section))


# Settings removed from a section, which older work folders still record: they are dropped when
# read back (the models made with them are stale through their fingerprints, not unreadable).
RETIRED_SETTINGS: dict[str, tuple[str, ...]] = {
    "BboxConfig": ("max_samples_per_image",),  # regression takes every sample (issue 16)
}


def section_from_dict(cls: type[S], values: Mapping[str, Any], where: str, fix: str) -> S:
    """Config section CLS rebuilt from a recorded dict VALUES (lists back to tuples); keys it
    lacks keep their defaults. A key CLS does not have (a setting renamed or removed since it was
    recorded) is refused, naming WHERE the dict came from and the FIX, not silently dropped."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k not in RETIRED_SETTINGS.get(cls.__name__, ())}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SppdetError(f"{where}: unknown {cls.__name__} settings {', '.join(unknown)}; {fix}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
