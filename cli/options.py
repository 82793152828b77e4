"""Options shared by several commands, defined once so their help text stays the same."""

from __future__ import annotations

from pathlib import Path

import typer

from sppdet.detector.backbones.registry import backbone_specs
from sppdet.detector.core.errors import SppdetError

DataOption = typer.Option(
    ..., "--data", help="VOC root (folder with Annotations/, ImageSets/Main/) or a COCO .json file."
)
SplitOption = typer.Option("trainval", "--split", help="Split name: ImageSets/Main/<split>.txt.")
ClassesOption = typer.Option(
    None,
    "--classes",
    help="Comma-separated class names, or 'voc' for the 20 VOC classes (default: from the data).",
)
WorkOption = typer.Option(Path("work"), "--work", help="Work folder of this experiment.")
PresetOption = typer.Option(
    "released",
    "--preset",
    help="Parameter set: released (default), paper, quick-cpu or demo (quick-cpu, shorter "
    "fine-tuning).",
)
StagePresetOption = typer.Option(
    None,
    "--preset",
    help="Parameter set: released, paper, quick-cpu or demo. Without it, the one the work "
    "folder's first stage recorded in WORK/settings.json, else released.",
    show_default="the work folder's",
)
ForceOption = typer.Option(
    False, "--force", help="Overwrite a store made with other settings instead of refusing."
)
WaitOption = typer.Option(  # the commands that write sharded stores
    False,
    "--wait",
    help="When another process is writing the same store, wait for it to finish and then run, "
    "instead of refusing.",
)
ExecutorOption = typer.Option(
    "local",
    "--executor",
    help="Where the per-shard tasks run: local (this machine) or ray (one task per shard on a "
    "Ray cluster; needs pip install 'sppdet[ray]' and a work folder shared by all nodes).",
)
RayAddressOption = typer.Option(
    None,
    "--ray-address",
    help="With --executor ray: the cluster to join, 'auto' (the one `ray start` runs on this "
    "node) or HOST:PORT.",
    show_default="start Ray on this machine for the run",
)


def _or_list(items: list[str]) -> str:
    """'a, b or c'."""
    return f"{', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else "".join(items)


BackboneOption = typer.Option(
    None,
    "--backbone",
    help="Conv trunk: "
    + _or_list([f"{spec.name} ({spec.description})" for spec in backbone_specs()])
    + ".",
    show_default="zf5",
)
WeightsOption = typer.Option(
    None,
    "--weights",
    help="random, imagenet (torchvision's weights API; "
    + "/".join(spec.name for spec in backbone_specs() if spec.torchvision is not None)
    + ", needs the file cached or a network) or PATH to a backbone checkpoint or torchvision "
    "state dict.",
    show_default="random",
)
DeviceOption = typer.Option(
    None,
    "--device",
    help="auto (cuda when present), cpu, cuda or cuda:N (the N-th GPU).",
    show_default="auto",
)
FcPrecisionOption = typer.Option(
    None,
    "--precision",
    help="fc6-fc8 in fp32, or under bf16/fp16 autocast (faster on GPUs and AMX CPUs; the score "
    "drift against fp32 is reported).",
    show_default="fp32",
)
FeaturesOption = typer.Option(
    "spp",
    "--features",
    help="Window features: spp (pooled from the conv5 cache) or rcnn (each window warped and "
    "run through the trunk, R-CNN's way; built by `cache-features --features rcnn`).",
)


def int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """A comma-separated option value as positive integers (None when not given)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise SppdetError(
            f"{option} {text!r}: give comma-separated integers, e.g. 480,688"
        ) from None
    if not values or min(values) < 1:
        raise SppdetError(f"{option} {text!r}: give positive integers")
    return values
