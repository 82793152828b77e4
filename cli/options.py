"""Options shared by several commands, defined once so their help text stays the same."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.detector.heads.lowrank import FcRank

# The backbones as --help lists them: (name, description, has torchvision ImageNet weights). The
# registry that declares them (sppdet.detector.backbones.registry) imports torch, which --help
# must not wait for; tests/cli/test_help.py checks this table against the registry.
BACKBONES_FOR_HELP: tuple[tuple[str, str, bool], ...] = (
    ("zf5", "ZF-5 conv1-conv5, the paper's", False),
    ("alexnet", "AlexNet conv1-conv5", True),
    ("vgg16", "VGG-16 conv1_1-conv5_3", True),
    ("resnet50", "ResNet-50 conv1-layer3", True),
    (
        "caffe-alexnet",
        "Caffe's AlexNet conv1-conv5, R-CNN's: grouped, with LRN; from convert-caffe",
        False,
    ),
)
# The --method values, as sppdet.proposals.methods.METHODS names them (it imports OpenCV);
# checked against it by the same test.
PROPOSAL_METHODS_FOR_HELP = ("ss-fast", "ss-quality", "edgeboxes", "ss+eb", "ss-rcnn")

DataOption = typer.Option(
    ..., "--data", help="VOC root (folder with Annotations/, ImageSets/Main/) or a COCO .json file."
)
SplitOption = typer.Option("trainval", "--split", help="Split name: ImageSets/Main/<split>.txt.")
ClassesOption = typer.Option(
    None,
    "--classes",
    help="Comma-separated class names, or 'voc' for the 20 VOC classes (default: from the data).",
)
ImagesOption = typer.Option(  # the commands that read a COCO --data's pixels
    None,
    "--images",
    help="With a COCO .json --data: the folder its images' file_names are relative to; "
    "{split} in it becomes the split's name, e.g. coco/{split}. A missing image is reported "
    "before any work starts.",
    show_default="the .json's folder",
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
    + _or_list([f"{name} ({description})" for name, description, _ in BACKBONES_FOR_HELP])
    + ".",
    show_default="zf5",
)
WeightsOption = typer.Option(
    None,
    "--weights",
    help="random, imagenet (torchvision's weights API; "
    + "/".join(name for name, _, imagenet in BACKBONES_FOR_HELP if imagenet)
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
FcRankOption = typer.Option(
    None,
    "--fc-rank",
    help="R6,R7: fc6 and fc7 replaced by rank-R6 and rank-R7 layers (R x (in + out) "
    "multiply-adds per window instead of in x out; computed once and kept in WORK/models).",
    show_default="full rank",
)
FcRankFitOption = typer.Option(
    "responses",
    "--fc-rank-fit",
    help="With --fc-rank: responses (the layers fitted to reproduce fc6's and fc7's outputs on "
    "10,000 proposals of the SVMs' training split) or weights (the truncated SVD of the "
    "weights, Fast R-CNN's, which loses more at a given rank).",
)


def fc_rank(text: str | None) -> tuple[int, int] | None:
    """--fc-rank R6,R7 as two positive ranks (None when not given)."""
    ranks = int_list(text, "--fc-rank")
    if ranks is not None and len(ranks) != 2:
        raise SppdetError(f"--fc-rank {text!r}: give two ranks, fc6's and fc7's, e.g. 512,256")
    return None if ranks is None else (ranks[0], ranks[1])


def fc_compression(text: str | None, fit: str) -> FcRank | None:
    """--fc-rank R6,R7 with --fc-rank-fit FIT (None when --fc-rank is not given)."""
    from sppdet.detector.heads.lowrank import FcRank

    ranks = fc_rank(text)
    compression = FcRank(ranks or (1, 1), fit)  # a bad --fc-rank-fit fails even without ranks
    return None if ranks is None else compression


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
