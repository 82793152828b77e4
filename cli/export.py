"""``sppdet export``: a work folder's trained detector as one model file, or as ONNX."""

from __future__ import annotations

from pathlib import Path

import typer

from sppdet.cli.app import app
from sppdet.cli.options import FcRankFitOption, FcRankOption, WorkOption, fc_compression
from sppdet.detector.core.errors import SppdetError

EXPORT_FORMATS = ("sppdet", "onnx")  # --format: the model file, or the ONNX recognition part


@app.command("export")
def export_command(
    work: Path = WorkOption,
    out: Path = typer.Option(
        ...,
        "--out",
        help="The model FILE to write (e.g. model.sppdet; a file here, not a folder).",
    ),
    ranks: str = FcRankOption,
    rank_fit: str = FcRankFitOption,
    model_file: Path | None = typer.Option(
        None, "--model", help="Convert this model FILE (from `sppdet export`) instead of --work."
    ),
    fmt: str = typer.Option(
        "sppdet",
        "--format",
        help="sppdet: one file for Detector.load; onnx: the recognition part for onnxruntime "
        "(one image at one scale + windows -> SVM scores, probabilities, box deltas).",
    ),
) -> None:
    """Write one file with everything detection needs: trunk, fc6-fc8, SVMs, regressors,
    preprocessing, scales, proposal settings, class names, the config and fingerprints.

    Load it with `Detector.load(FILE)` (Python) on any machine: no work folder or dataset
    needed. It holds tensors and plain values only (`torch.load(FILE, weights_only=True)`).

    --format onnx writes the recognition part as an ONNX model (the `onnx` extra): inputs
    `image` (1x3xHxW, resized to one scale and preprocessed) and `windows` (Nx4 x1 y1 x2 y2,
    pixels of that resized image); outputs `scores` (SVM margins, NxK), `probabilities` (when
    calibrated) and `deltas` (Nx4K, box regression). Its metadata names the classes, scales and
    preprocessing; proposals and NMS stay outside.
    """
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.detection.scorer import model_with_fc_rank
    from sppdet.detector.inference.model import model_from_work, read_model_file, save_model_file
    from sppdet.detector.inference.onnx_export import export_onnx

    if fmt not in EXPORT_FORMATS:
        raise SppdetError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    truncated = fc_compression(ranks, rank_fit)
    if model_file is not None and truncated is not None:
        raise SppdetError(
            "--fc-rank with --model: truncating needs the work folder ; export with --work W "
            "--fc-rank R6,R7, then convert that file with --model"
        )
    if model_file is not None:
        model = read_model_file(model_file)
    else:
        workdir = WorkDir.at(work)
        model = model_from_work(workdir)
    if truncated is not None:  # fc6/fc7 at low rank, in the file and in WORK/models
        model = model_with_fc_rank(workdir, model, truncated)
    if fmt == "onnx":
        path = export_onnx(model, out, str(model_file or work))
    else:
        path = save_model_file(model, out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")  # plain: rich wraps long paths
