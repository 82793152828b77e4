"""``sppdet propose`` and ``sppdet propose-recall``: region proposals and their recall."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from sppdet.cache.locks import waiting_for_writers
from sppdet.cli.app import app
from sppdet.cli.options import (
    PROPOSAL_METHODS_FOR_HELP,
    DataOption,
    ExecutorOption,
    ForceOption,
    ImagesOption,
    RayAddressOption,
    SplitOption,
    StagePresetOption,
    WaitOption,
    WorkOption,
)
from sppdet.detector.core.config import ProposalConfig, override
from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.proposals.stage import ProposeSummary


def _print_summary(summary: ProposeSummary, console: Console) -> None:
    timing = ""
    if summary.seconds_per_image is not None:
        timing = (
            f", {summary.seconds_per_image:.3f} s/image per worker "
            f"({summary.cpu_seconds_per_image:.3f} s CPU)"
        )
    console.print(
        f"{summary.method}: {summary.images} images ({summary.computed} computed, "
        f"{summary.resumed} already done), {summary.mean_boxes:.0f} boxes/image{timing}, "
        f"{summary.wall_seconds:.1f} s wall with {summary.executor} -> {summary.store}",
        markup=False,
        highlight=False,
    )
    for bad in summary.bad:
        console.print(f"unreadable: {bad.reason}", markup=False, highlight=False)


@app.command("propose")
def propose_command(
    data: Path = DataOption,
    split: str = SplitOption,
    method: str = typer.Option(
        None,
        "--method",
        help=f"Proposal method: {', '.join(PROPOSAL_METHODS_FOR_HELP)} (ss = Selective Search, "
        "eb = EdgeBoxes).",
        show_default=ProposalConfig.method,
    ),
    max_boxes: int = typer.Option(
        None,
        "--max-boxes",
        min=1,
        help="Keep at most this many boxes per image and method, best first (ss+eb: up to twice "
        "this). With --import: all unless given.",
        show_default="2000 (500 with --preset quick-cpu)",
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="With --executor local: processes (one thread each)."
    ),
    executor: str = ExecutorOption,
    ray_address: str | None = RayAddressOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    force: bool = ForceOption,
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Accept unreadable images (stored with zero boxes) instead of exiting non-zero.",
    ),
    edge_model: Path | None = typer.Option(
        None,
        "--edge-model",
        help="Structured-edge model (OpenCV's model.yml.gz) for EdgeBoxes instead of the "
        "built-in edge detector.",
    ),
    import_file: Path | None = typer.Option(
        None,
        "--import",
        help="Import published proposals: an R-CNN .mat file with cell arrays 'images' and "
        "'boxes' (rows y1 x1 y2 x2, 1-based), MATLAB v5/v7 or v7.3.",
    ),
    wait: bool = WaitOption,
    images: Path | None = ImagesOption,
) -> None:
    """Compute region proposals per image into WORK/proposals/<split>/ (resumable)."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.core.parallel import Executor
    from sppdet.detector.data.datasets import load_dataset
    from sppdet.detector.training.presets import record_config, stage_config
    from sppdet.proposals.methods import proposal_method
    from sppdet.proposals.stage import import_proposals, raise_for_bad, run_proposals

    workdir = WorkDir.at(work)
    settings = stage_config(workdir, preset_name)
    cfg = settings.proposals
    runner = Executor(executor, workers, ray_address)
    dataset = load_dataset(data, split, image_dir=images, require_images=True)
    record_config(workdir, settings)  # the first stage: later ones run with this preset
    console = Console()
    if import_file is not None:
        if method is not None or edge_model is not None:
            raise SppdetError("--import stores the file's boxes; drop --method and --edge-model")
        if runner.kind != "local":
            raise SppdetError("--import reads one file in this process; drop --executor ray")
        with waiting_for_writers(wait):
            summary = import_proposals(
                dataset, workdir, import_file, min_side=cfg.min_side, max_boxes=max_boxes,
                shard_size=cfg.shard_size, force=force,
            )  # fmt: skip
    else:
        method = proposal_method(method).name if method is not None else None
        cfg = override(cfg, method=method, max_boxes=max_boxes)
        with waiting_for_writers(wait):
            summary = run_proposals(
                dataset, workdir, cfg, force=force, edge_model=edge_model, executor=runner
            )
    _print_summary(summary, console)
    if not skip_bad:
        raise_for_bad(summary)


@app.command("propose-recall")
def propose_recall_command(
    data: Path = DataOption,
    split: str = SplitOption,
    work: Path = WorkOption,
    json_out: Path | None = typer.Option(
        None, "--report", help="Also write the figures to this JSON file."
    ),
) -> None:
    """Recall of the stored proposals: IoU 0.5/0.7, average recall at N, boxes and s/image."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.data.datasets import load_dataset
    from sppdet.proposals.recall import AR_LIMITS, measure_recall

    dataset = load_dataset(data, split)
    workdir = WorkDir.at(work)
    report = measure_recall(dataset, workdir, json_out)
    console = Console()
    title = (
        f"proposal recall, {report.method}, split {split!r} "
        f"({report.images} images, {report.gt_boxes} boxes, difficult excluded)"
    )
    table = Table(title=title)
    table.add_column("boxes (N)", justify="right")
    table.add_column("recall@0.5", justify="right")
    table.add_column("recall@0.7", justify="right")
    table.add_column("AR 0.5:0.95", justify="right")
    for n in AR_LIMITS:
        at_n = report.recall_at_n[str(n)]
        ar = report.average_recall[str(n)]
        table.add_row(str(n), f"{at_n['0.5']:.3f}", f"{at_n['0.7']:.3f}", f"{ar:.3f}")
    table.add_row("all", f"{report.recall['0.5']:.3f}", f"{report.recall['0.7']:.3f}", "")
    console.print(table)
    seconds = "n/a"
    if report.seconds_per_image is not None:
        seconds = f"{report.seconds_per_image:.3f} ({report.cpu_seconds_per_image:.3f} CPU)"
    line = f"mean boxes/image {report.mean_boxes:.1f}; seconds/image {seconds}"
    if report.bad_images:
        line += f"; {report.bad_images} unreadable image(s) count as missed"
    console.print(line, markup=False, highlight=False)
    destinations = [workdir.report("recall.json")] + ([json_out] if json_out else [])
    wrote = f"wrote {', '.join(str(p) for p in destinations)}"
    Console(stderr=True).print(wrote, markup=False, highlight=False)
