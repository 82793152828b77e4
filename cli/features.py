"""``sppdet cache-features`` and ``sppdet cache-info``: the multi-scale conv5 cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from sppdet.cache.locks import waiting_for_writers
from sppdet.cli.app import app
from sppdet.cli.options import (
    BackboneOption,
    ClassesOption,
    DataOption,
    DeviceOption,
    ExecutorOption,
    FeaturesOption,
    ForceOption,
    ImagesOption,
    RayAddressOption,
    SplitOption,
    StagePresetOption,
    WaitOption,
    WeightsOption,
    WorkOption,
    int_list,
)

if TYPE_CHECKING:
    from sppdet.detector.features.rcnn_writer import RcnnStats
    from sppdet.detector.features.reader import CacheInfo
    from sppdet.detector.features.writer import CacheStats

ScalesOption = typer.Option(
    None,
    "--scales",
    help="Shorter image sides to cache, comma-separated; 688 alone is the paper's 1-scale setting.",
    show_default="the preset's: 480,576,688,874,1200 (released), 480,576,688,864,1200 (paper)",
)
MaxSizeOption = typer.Option(
    None,
    "--max-size",
    help="Cap on the longer side of a resized image (px). A capped image is resized to "
    "this longer side instead: its shorter side, the effective scale, is then below the "
    "asked scale and is recorded and used for the window mapping.",
    show_default="2000",
)
DtypeOption = typer.Option(
    None, "--dtype", help="Storage type: float16 or float32.", show_default="float16"
)
FlipOption = typer.Option(  # cache-features and run
    None,
    "--flip/--no-flip",
    help="Also cache the mirrored images; fine-tuning then takes half its windows from them, "
    "as the released code does.",
    show_default="the preset's: flip in every preset",
)
PyramidOption = typer.Option(
    None,
    "--pyramid",
    help="SPP levels later stages pool with, recorded with the cache (not part of the "
    "cached maps). With torchvision ImageNet weights a single level 6 "
    "(alexnet) or 7 (vgg16) reproduces the pretrained fc6's input, so fc6 is reused; "
    "other pyramids train fc6 from scratch.",
    show_default="1,2,3,6",
)
PrecisionOption = typer.Option(
    None,
    "--precision",
    help="fp32, or bf16/fp16 autocast of the trunk (fp16 suits GPUs; see `sppdet bench` "
    "for how far the scores move).",
    show_default="fp32",
)


@app.command("cache-features")
def cache_features_command(
    data: Path = DataOption,
    split: str = SplitOption,
    backbone: str = BackboneOption,
    weights: str = WeightsOption,
    scales: str = ScalesOption,
    max_size: int = MaxSizeOption,
    dtype: str = DtypeOption,
    flip: bool = FlipOption,
    device: str = DeviceOption,
    pyramid: str = PyramidOption,
    kind: str = FeaturesOption,
    precision: str = PrecisionOption,
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    force: bool = ForceOption,
    executor: str = ExecutorOption,
    ray_address: str | None = RayAddressOption,
    wait: bool = WaitOption,
    images: Path | None = ImagesOption,
) -> None:
    """Run the conv layers once per image and scale; store the conv5 maps (resumable).

    With --features rcnn, instead warp every proposal and ground-truth box (16 px of context) to
    the trunk's input size and store its pool5 features, R-CNN's way, for the comparison runs
    of `train-svm --features rcnn` and `detect --features rcnn` (needs `sppdet propose`).
    """
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.core.parallel import Executor
    from sppdet.detector.data.datasets import load_dataset, parse_classes
    from sppdet.detector.features.stage import (
        FeatureOptions,
        cache_split_features,
        fc6_pyramid_note,
        feature_settings,
    )
    from sppdet.detector.training.inputs import check_features
    from sppdet.detector.training.presets import record_config, stage_config

    runner = Executor(executor, address=ray_address)
    options = FeatureOptions(
        kind=check_features(kind),
        backbone=backbone,
        weights=weights,
        scales=int_list(scales, "--scales"),
        max_size=max_size,
        dtype=dtype,
        flip=flip,
        device=device,
        pyramid=int_list(pyramid, "--pyramid"),
        precision=precision,
    )
    workdir = WorkDir.at(work)
    preset_settings = stage_config(workdir, preset_name)
    settings = feature_settings(preset_settings, options, runner)
    dataset = load_dataset(data, split, parse_classes(classes), images, require_images=True)
    record_config(workdir, preset_settings)  # the folder's preset, when it has none yet
    console = Console(stderr=True)
    note = fc6_pyramid_note(settings)
    if note is not None:
        console.print(f"note: {note}")
    with waiting_for_writers(wait):
        made = cache_split_features(dataset, work, settings, force=force, executor=runner)
    console.print(_cached_summary(made, dataset.split))


def _cached_summary(made: CacheStats | RcnnStats, split: str) -> str:
    from sppdet.detector.features.rcnn_writer import RcnnStats

    if isinstance(made, RcnnStats):
        return (
            f"cached R-CNN pool5 of {made.computed} images ({made.images - made.computed} "
            f"already done, {made.windows} windows) in {made.seconds:.1f} s in {made.root}"
        )
    return (
        f"cached {made.computed} images ({made.images - made.computed} already done) of "
        f"{split!r} at scales {','.join(map(str, made.scales))} in {made.wall:.1f} s "
        f"(forward {made.forward:.1f} s); {made.bytes_total / 2**20:.1f} MiB in {made.root}; "
        f"fingerprint {made.fingerprint}"
    )


@app.command("cache-info")
def cache_info_command(
    split: str = SplitOption,
    work: Path = WorkOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Describe a feature cache: images, scales, bytes per image and in total, fingerprint."""
    from sppdet.detector.features.reader import cache_info

    info = cache_info(work, split)
    if as_json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
        return
    lines = _info_lines(info)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")


def _info_lines(info: CacheInfo) -> list[tuple[str, str]]:
    shards = f"shards {info.shards_done}/{info.shards_total}"
    return [
        ("store", str(info.path)),
        ("images", f"{info.images_cached} of {info.images} cached ({shards})"),
        ("backbone", f"{info.backbone}  weights {info.weights}"),
        ("scales", ",".join(map(str, info.scales)) + f"  max size {info.max_size}"),
        ("storage", f"{info.dtype}, flip {'on' if info.flip else 'off'}"),
        ("preprocessing", json.dumps(info.preprocessing, sort_keys=True)),
        ("bytes/image", f"{info.bytes_per_image / 2**20:.2f} MiB"),
        ("bytes total", f"{info.bytes_total / 2**20:.1f} MiB"),
        ("fingerprint", info.fingerprint),
    ]
