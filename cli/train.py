"""``sppdet finetune``, ``sppdet train-svm`` and ``sppdet train-bbox``: the training stages."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sppdet.cli.app import app
from sppdet.cli.options import (
    ClassesOption,
    DataOption,
    DeviceOption,
    FcPrecisionOption,
    FeaturesOption,
    ForceOption,
    SplitOption,
    StagePresetOption,
    WorkOption,
)
from sppdet.detector.core.config import override

HoldoutOption = typer.Option(  # finetune and run
    None,
    "--holdout",
    help="Fraction of the training images (evenly spread) held out of fine-tuning; the log "
    "then adds their loss and foreground accuracy. A monitor only: the last iterate is kept.",
    show_default="0: every image trains, as released",
)
TensorboardOption = typer.Option(  # finetune and train-svm
    None,
    "--tensorboard",
    help="Also write the training's metrics (those of WORK/reports/<stage>.csv) as TensorBoard "
    "scalars to this folder; needs pip install 'sppdet[tensorboard]'.",
)


@app.command("finetune")
def finetune_command(
    data: Path = DataOption,
    split: str = SplitOption,
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    iterations: int = typer.Option(None, "--iterations", help="Mini-batches to train."),
    lr: float = typer.Option(None, "--lr", help="Base learning rate (dropped 10x at each step)."),
    fc_dim: int = typer.Option(
        None, "--fc-dim", help="fc6/fc7 width when the backbone has no fc6/fc7 of its own."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed of sampling, dropout and fc8's init."),
    holdout: float = HoldoutOption,
    tensorboard: Path | None = TensorboardOption,
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
    force: bool = ForceOption,
) -> None:
    """Fine-tune fc6, fc7 and a new fc8 (K+1 outputs) on pooled windows from the conv5 cache.

    Foreground: IoU >= 0.5 with a ground-truth box (boxes included); background: IoU in
    [0.1, 0.5). Batches of 128, 25% foreground, each window at a random cached scale, and from
    the mirrored image half of the time when the cache holds flips. Resumes from the last
    checkpoint after an interrupt.
    """
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.heads.finetune import describe_metrics
    from sppdet.detector.training.finetune import run_finetune
    from sppdet.detector.training.inputs import UpToDate, open_split
    from sppdet.detector.training.presets import record_config, stage_config
    from sppdet.detector.training.runtime import Runtime

    workdir = WorkDir.at(work)
    settings = stage_config(workdir, preset_name)
    cfg = override(
        settings.finetune,
        iterations=iterations,
        base_lr=lr,
        fc_dim=fc_dim,
        seed=seed,
        holdout=holdout,
    )
    runtime = Runtime.create(device, precision, settings.preset)
    inputs = open_split(workdir, data, split, classes, device=runtime.device)
    record_config(workdir, settings)  # the folder's preset, when it has none yet
    result = run_finetune(
        workdir, inputs, cfg, force=force, runtime=runtime, tensorboard=tensorboard
    )
    console = Console()
    if isinstance(result, UpToDate):
        console.print(f"{result.model} is up to date (use --force to retrain)")
        return
    console.print(result.origin)
    for entry in result.history[-3:]:
        console.print(f"iteration {entry['iteration']}: {describe_metrics(entry)}")
    if result.drift is not None:
        console.print(result.drift.describe(runtime.precision, "logits"))
    console.print(
        f"wrote {result.model} after {result.iterations} iterations on {runtime.describe()} "
        f"({100 * result.data_wait_share:.1f}% of the time waiting for conv5 maps)"
    )


@app.command("train-svm")
def train_svm_command(
    data: Path = DataOption,
    split: str = SplitOption,
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    layer: str = typer.Option(
        None, "--layer", help="Features: pool5, fc6 or fc7 (after ReLU).", show_default="fc7"
    ),
    finetuned: bool = typer.Option(
        None,
        "--finetuned/--no-finetuned",
        help="fc6/fc7 of the fine-tuned head (needs `sppdet finetune`) or of the backbone: with "
        "--layer, the rows of the paper's Table 9.",
        show_default="finetuned with spp features; the backbone's with rcnn",
    ),
    features: str = FeaturesOption,
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
    force: bool = ForceOption,
    tensorboard: Path | None = TensorboardOption,
) -> None:
    """One linear SVM per class with hard-negative mining (liblinear, C=0.001, w+ = 2, bias 10)."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.training.inputs import UpToDate, open_split
    from sppdet.detector.training.presets import record_config, stage_config
    from sppdet.detector.training.runtime import Runtime
    from sppdet.detector.training.svm import run_train_svm

    workdir = WorkDir.at(work)
    settings = stage_config(workdir, preset_name)
    cfg = override(settings.svm, layer=layer)
    runtime = Runtime.create(device, precision, settings.preset)
    inputs = open_split(workdir, data, split, classes, features=features, device=runtime.device)
    record_config(workdir, settings)
    if finetuned is None:
        finetuned = inputs.features == "spp"  # fine-tuning runs on SPP features only
    result = run_train_svm(
        workdir, inputs, cfg, finetuned, force, runtime=runtime, tensorboard=tensorboard
    )
    console = Console()
    if isinstance(result, UpToDate):
        console.print(f"{result.model} is up to date (use --force to retrain)")
        return
    for name, stats in result.stats.items():
        console.print(
            f"{name}: {stats['retrains']} retrains, {stats['cached_negatives']} hard negatives kept"
        )
    if result.drift is not None:
        console.print(result.drift.describe(runtime.precision, "SVM scores"))
    if not result.retrained:
        console.print("the SVMs were up to date: calibrated them, kept them")
    if result.calibration is not None:
        sigmoids = zip(result.stats, result.calibration.a, result.calibration.b, strict=True)
        for name, a, b in sigmoids:
            console.print(f"{name}: P(correct) = 1 / (1 + exp({a:.4g} * margin {b:+.4g}))")
    console.print(f"feature scale {result.scale:.4g}; wrote {result.model}")


@app.command("train-bbox")
def train_bbox_command(
    data: Path = DataOption,
    split: str = SplitOption,
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    features: str = FeaturesOption,
    device: str = DeviceOption,
    force: bool = ForceOption,
) -> None:
    """Per-class ridge regressors (lambda 4000) from pool5 features to whitened R-CNN deltas."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.training.bbox import run_train_bbox
    from sppdet.detector.training.inputs import UpToDate, open_split
    from sppdet.detector.training.presets import record_config, stage_config
    from sppdet.detector.training.runtime import Runtime

    workdir = WorkDir.at(work)
    settings = stage_config(workdir, preset_name)
    cfg = settings.bbox
    runtime = Runtime.create(device, preset=settings.preset)
    inputs = open_split(workdir, data, split, classes, features=features, device=runtime.device)
    record_config(workdir, settings)
    result = run_train_bbox(workdir, inputs, cfg, force, runtime=runtime)
    if isinstance(result, UpToDate):
        Console().print(f"{result.model} is up to date (use --force to retrain)")
        return
    samples = ", ".join(f"{k} {v}" for k, v in result.samples.items())
    Console().print(f"samples per class: {samples}; wrote {result.model}")
