"""The ``cache-features`` stage: a split's window features of either kind, from the preset and the
options given.

``--features spp`` (the default) builds the conv5 cache (``sppdet.detector.features.writer``);
``--features rcnn`` builds the R-CNN pool5 store (``sppdet.detector.features.rcnn_writer``). The
options override the preset's settings; an option only the other kind uses is refused, and
``fc6_pyramid_note`` says when the pyramid keeps torchvision's ImageNet fc6 from being reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.registry import backbone_names, backbone_spec
from sppdet.detector.core.config import (
    FeatureConfig,
    PipelineConfig,
    RcnnConfig,
    SppConfig,
    override,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor
from sppdet.detector.data.records import Dataset
from sppdet.detector.features.rcnn_writer import RcnnStats, cache_rcnn_features
from sppdet.detector.features.writer import CacheStats, cache_features


@dataclass(frozen=True)
class FeatureOptions:
    """The options of ``sppdet cache-features`` that change settings; None keeps the preset's."""

    kind: str = "spp"  # spp | rcnn (``--features``)
    backbone: str | None = None
    weights: str | None = None
    scales: tuple[int, ...] | None = None
    max_size: int | None = None
    dtype: str | None = None
    flip: bool | None = None
    device: str | None = None
    pyramid: tuple[int, ...] | None = None
    precision: str | None = None


@dataclass(frozen=True)
class FeatureSettings:
    """What one ``cache-features`` run uses: the preset's sections with the options applied."""

    kind: str
    features: FeatureConfig
    spp: SppConfig
    rcnn: RcnnConfig


def feature_settings(
    config: PipelineConfig, options: FeatureOptions, executor: Executor
) -> FeatureSettings:
    """CONFIG's sections with OPTIONS applied; refuses options the chosen kind does not use."""
    if options.kind == "rcnn":
        _check_rcnn_options(options, executor)
    features = override(
        config.features,
        backbone=options.backbone,
        weights=options.weights,
        scales=options.scales,
        max_size=options.max_size,
        dtype=options.dtype,
        flip=options.flip,
        device=options.device,
        precision=options.precision if options.kind == "spp" else None,  # rcnn: its own section's
    )
    spp = override(config.spp, pyramid=options.pyramid)
    rcnn = override(config.rcnn, precision=options.precision, dtype=options.dtype)
    return FeatureSettings(options.kind, features, spp, rcnn)


def _check_rcnn_options(options: FeatureOptions, executor: Executor) -> None:
    if executor.kind != "local":
        raise SppdetError("--executor ray: --features rcnn runs locally only; leave it out")
    spp_only = {"--scales": options.scales, "--max-size": options.max_size, "--flip": options.flip}
    given = [name for name, value in spp_only.items() if value is not None]
    if given:
        raise SppdetError(f"{', '.join(given)}: not used by --features rcnn; leave out")


def fc6_pyramid_note(settings: FeatureSettings) -> str | None:
    """Why fc6 will start from scratch, when torchvision ImageNet weights meet another pyramid."""
    features, pyramid = settings.features, tuple(settings.spp.pyramid)
    if features.weights != "imagenet" or features.backbone not in backbone_names():
        return None  # an unknown backbone is refused with the store's other settings
    source = backbone_spec(features.backbone).torchvision
    native = source.head_pyramid if source is not None else None
    if not native or pyramid == native:
        return None
    return (
        f"{features.backbone}'s ImageNet fc6 expects pyramid {','.join(map(str, native))}; with "
        f"{','.join(map(str, pyramid))} fc6 starts from scratch (fc7 is still reused)"
    )


def cache_split_features(
    dataset: Dataset,
    work: WorkDir | str | Path,
    settings: FeatureSettings,
    force: bool = False,
    executor: Executor | None = None,
) -> CacheStats | RcnnStats:
    """Build (or resume) DATASET's features of SETTINGS' kind in WORK; returns what it did."""
    if settings.kind == "rcnn":
        return cache_rcnn_features(
            dataset, work, settings.features, settings.spp, settings.rcnn, force=force
        )
    return cache_features(
        dataset, work, settings.features, spp=settings.spp, force=force, executor=executor
    )
