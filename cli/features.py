"""``sppdet cache-features`` and ``sppdet cache-info``: the multi-scale conv5 cache."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from sppdet.cli.app import app
from sppdet.cli.options import (
    BackboneOption,
    ClassesOption,
    DataOption,
    DeviceOption,
    ExecutorOption,
    FeaturesOption,
    ForceOption,
    PresetOption,
    RayAddressOption,
    SplitOption,
    WeightsOption,
    WorkOption,
    int_list,
)
from sppdet.detector.backbones.trunk import TORCHVISION_PYRAMID
from sppdet.detector.core.config import override, preset
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor
from sppdet.detector.data.datasets import load_dataset, parse_classes
from sppdet.detector.features.rcnn import cache_rcnn_features
from sppdet.detector.features.reader import cache_info
from sppdet.detector.features.writer import cache_features
from sppdet.detector.training.inputs import check_features


@app.command("cache-features")
def cache_features_command(
    data: Path = DataOption,
    split: str = SplitOption,
    backbone: str = BackboneOption,
    weights: str = WeightsOption,
    scales: str = typer.Option(
        None,
        "--scales",
        help="Shorter image sides to cache, comma-separated; 688 alone is the paper's 1-scale "
        "setting.",
        show_default="the preset's: 480,576,688,874,1200 (released), 480,576,688,864,1200 (paper)",
    ),
    max_size: int = typer.Option(
        None,
        "--max-size",
        help="Cap on the longer side of a resized image (px). A capped image is resized to "
        "this longer side instead: its shorter side, the effective scale, is then below the "
        "asked scale and is recorded and used for the window mapping.",
        show_default="2000",
    ),
    dtype: str = typer.Option(
        None, "--dtype", help="Storage type: float16 or float32.", show_default="float16"
    ),
    flip: bool = typer.Option(
        None, "--flip/--no-flip", help="Also cache the mirrored images.", show_default="no-flip"
    ),
    device: str = DeviceOption,
    pyramid: str = typer.Option(
        None,
        "--pyramid",
        help="SPP levels later stages pool with, recorded with the cache (not part of the "
        "cached maps). With torchvision ImageNet weights a single level 6 "
        "(alexnet) or 7 (vgg16) reproduces the pretrained fc6's input, so fc6 is reused; "
        "other pyramids train fc6 from scratch.",
        show_default="1,2,3,6",
    ),
    kind: str = FeaturesOption,
    precision: str = typer.Option(
        None,
        "--precision",
        help="fp32, or bf16/fp16 autocast of the trunk (fp16 suits GPUs; see `sppdet bench` "
        "for how far the scores move).",
        show_default="fp32",
    ),
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = PresetOption,
    force: bool = ForceOption,
    executor: str = ExecutorOption,
    ray_address: str | None = RayAddressOption,
) -> None:
    """Run the conv layers once per image and scale; store the conv5 maps (resumable).

    With --features rcnn, instead warp every proposal and ground-truth box (16 px of context) to
    the trunk's input size and store its pool5 features, R-CNN's way, for the comparison runs
    of `train-svm --features rcnn` and `detect --features rcnn` (needs `sppdet propose`).
    """
    runner = Executor(executor, address=ray_address)
    if kind == "rcnn" and runner.kind != "local":
        raise SppdetError("--executor ray: --features rcnn runs locally only; leave it out")
    config = preset(preset_name)
    if check_features(kind) == "rcnn":
        spp_only = {"--scales": scales, "--max-size": max_size, "--flip": flip}
        given = [name for name, value in spp_only.items() if value is not None]
        if given:
            raise SppdetError(f"{', '.join(given)}: not used by --features rcnn; leave out")
    features = override(
        config.features,
        backbone=backbone,
        weights=weights,
        scales=int_list(scales, "--scales"),
        max_size=max_size,
        dtype=dtype,
        flip=flip,
        device=device,
        precision=precision if kind == "spp" else None,  # rcnn: its own section's
    )
    spp = override(config.spp, pyramid=int_list(pyramid, "--pyramid"))
    dataset = load_dataset(data, split, parse_classes(classes))
    console = Console(stderr=True)
    native = TORCHVISION_PYRAMID.get(features.backbone)
    if features.weights == "imagenet" and native and tuple(spp.pyramid) != native:
        console.print(
            f"note: {features.backbone}'s ImageNet fc6 expects pyramid "
            f"{','.join(map(str, native))}; with {','.join(map(str, spp.pyramid))} fc6 starts "
            "from scratch (fc7 is still reused)"
        )
    if kind == "rcnn":
        rcnn = override(config.rcnn, precision=precision, dtype=dtype)
        made = cache_rcnn_features(dataset, work, features, spp, rcnn, force=force)
        console.print(
            f"cached R-CNN pool5 of {made.computed} images ({made.images - made.computed} "
            f"already done, {made.windows} windows) in {made.seconds:.1f} s in {made.root}"
        )
        return
    stats = cache_features(dataset, work, features, spp=spp, force=force, executor=runner)
    done = stats.images - stats.computed
    console.print(
        f"cached {stats.computed} images ({done} already done) of {dataset.split!r} at scales "
        f"{','.join(map(str, stats.scales))} in {stats.wall:.1f} s "
        f"(forward {stats.forward:.1f} s); {stats.bytes_total / 2**20:.1f} MiB in {stats.root}; "
        f"fingerprint {stats.fingerprint}"
    )


@app.command("cache-info")
def cache_info_command(
    split: str = SplitOption,
    work: Path = WorkOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Describe a feature cache: images, scales, bytes per image and in total, fingerprint."""
    info = cache_info(work, split)
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    lines = [
        ("store", info["path"]),
        ("images", f"{info['images_cached']} of {info['images']} cached (shards {info['shards']})"),
        ("backbone", f"{info['backbone']}  weights {info['weights']}"),
        ("scales", ",".join(map(str, info["scales"])) + f"  max size {info['max_size']}"),
        ("storage", f"{info['dtype']}, flip {'on' if info['flip'] else 'off'}"),
        ("preprocessing", json.dumps(info["preprocessing"], sort_keys=True)),
        ("bytes/image", f"{info['bytes_per_image'] / 2**20:.2f} MiB"),
        ("bytes total", f"{info['bytes_total'] / 2**20:.1f} MiB"),
        ("fingerprint", info["fingerprint"]),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
