"""ONNX export against sppdet's PyTorch path (issue 15, item 5): agreement and time per image.

For the first --images images of --split, at the model's first scale, --windows windows per
image (the proposals, topped up with seeded random windows) go through

  onnxruntime  the model from `sppdet export --format onnx` (--onnx; without it, the model is
               exported to a temporary file by ``export_onnx``, as the CLI does)
  PyTorch      what the detect stage computes for them: the trunk, conv5 stored in the cache's
               dtype, ``boxes_to_cells``, ``WindowPooler`` into float32, ``WindowScorer.scores``
               (the SVM margins), ``BoxRegressor`` for every class on every window (float64)

and the script prints the largest |difference| of margins and deltas, whether the best window
of each class is the same, and the median seconds per image of each: one warm-up run each,
then --repeats interleaved pairs per image, --threads threads each (torch intra-op threads,
onnxruntime intra-op threads). The PyTorch column's parts are medians too. On a shared machine
the absolute times move with the load (printed at start and end); the ratio is per pair.

    python benchmarks/bench_onnx.py --work W --onnx racc.onnx --data ../shared/data/raccoon-voc
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.features.reader import TORCH_DTYPES
from sppdet.detector.inference.detector import Detector
from sppdet.detector.inference.model import model_from_work, read_model_file
from sppdet.detector.inference.onnx_export import OnnxInputs, export_onnx, onnx_inputs
from sppdet.detector.spp.geometry import boxes_to_cells, edge_shift
from sppdet.proposals.methods import propose

SEED = 0  # of the random windows that top up the proposals
TORCH_PARTS = ("trunk", "cells + pool", "fc6/fc7 + SVM", "regressors")


def load() -> str:
    """The clock time and the 1-, 5- and 15-minute load averages, as ``uptime`` says them."""
    return time.strftime("%H:%M:%S ") + " ".join(f"{x:.2f}" for x in os.getloadavg())


def windows_of(rgb: np.ndarray, detector: Detector, count: int) -> np.ndarray:
    """COUNT windows [COUNT, 4] float32 of RGB: its proposals, best first, then random windows
    (uniform corners, at least 1 px wide and high) up to COUNT."""
    boxes = propose(rgb, detector.proposals).astype(np.float32)[:count]
    missing = count - len(boxes)
    if missing > 0:
        rng = np.random.default_rng(SEED)
        height, width = rgb.shape[:2]
        x1 = rng.uniform(0, width - 2, missing)
        y1 = rng.uniform(0, height - 2, missing)
        x2 = rng.uniform(x1 + 1, width - 1)
        y2 = rng.uniform(y1 + 1, height - 1)
        boxes = np.concatenate([boxes, np.stack([x1, y1, x2, y2], 1).astype(np.float32)])
    return boxes


@dataclass
class TorchResult:
    scores: np.ndarray  # [N, K] SVM margins
    deltas: np.ndarray | None  # [N, 4K], None without regressors
    parts: np.ndarray  # seconds of TORCH_PARTS


def torch_path(detector: Detector, inputs: OnnxInputs) -> TorchResult:
    """The detect stage's computation for INPUTS' windows at their scale (module docstring)."""
    settings, scorer = detector.map_settings, detector.scorer
    shift = edge_shift(settings.spp.window_mapping, settings.geometry)
    stamps = [time.perf_counter()]
    with torch.inference_mode():
        conv5 = detector.trunk(torch.from_numpy(inputs.image))[0]
        stamps.append(time.perf_counter())
        height, width = conv5.shape[1:]
        windows = inputs.windows.astype(np.float64)
        cells = boxes_to_cells(windows, 1.0, settings.geometry, height, width, shift)
        stored = conv5.to(TORCH_DTYPES[settings.dtype])
        out = detector.pooler.new_result(len(cells), settings.dim, torch.float32)
        pooled = detector.pooler.pool(stored, cells, settings.pyramid, out=out)
        stamps.append(time.perf_counter())
        scores = scorer.scores(pooled).numpy()
        stamps.append(time.perf_counter())
    deltas = None
    if scorer.regressor is not None:
        features = pooled.numpy() * scorer.bbox_scale  # as WindowScorer.candidates has them
        labels = [np.full(len(cells), k) for k in range(len(detector.class_names))]
        deltas = np.concatenate([scorer.regressor.deltas(features, k) for k in labels], 1)
    stamps.append(time.perf_counter())
    return TorchResult(scores, deltas, np.diff(stamps))


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(found: dict[str, np.ndarray], want: TorchResult) -> dict[str, Any]:
    """Largest |difference| of margins and deltas, and whether each class's best window agrees."""
    row: dict[str, Any] = {
        "scores": float(np.abs(found["scores"] - want.scores).max()),
        "median |score|": float(np.median(np.abs(want.scores))),
        "same best": bool(np.all(found["scores"].argmax(0) == want.scores.argmax(0))),
    }
    if want.deltas is not None:
        row["deltas"] = float(np.abs(found["deltas"] - want.deltas).max())
        row["max |delta|"] = float(np.abs(want.deltas).max())
    return row


def run(args: argparse.Namespace, onnx_path: Path, model: dict[str, Any]) -> None:
    torch.set_num_threads(args.threads)
    detector = Detector.from_model(model, device="cpu")
    onnx_session = session(onnx_path, args.threads)
    names = [o.name for o in onnx_session.get_outputs()]
    scale = detector.map_settings.scales[0]
    records = load_dataset(args.data, args.split).records[: args.images]
    print(f"load at start {load()}; {onnx_path}; threads {args.threads}; scale {scale}")
    agreement, pairs, parts = [], [], []
    for record in records:
        rgb = read_image(record.path)
        inputs = onnx_inputs(detector, rgb, windows_of(rgb, detector, args.windows), scale)
        feed = inputs.feed()
        found = dict(zip(names, onnx_session.run(None, feed), strict=True))  # also the warm-up runs
        agreement.append(compare(found, torch_path(detector, inputs)))
        for _ in range(args.repeats):
            start = time.perf_counter()
            onnx_session.run(None, feed)
            middle = time.perf_counter()
            parts.append(torch_path(detector, inputs).parts)
            pairs.append((middle - start, time.perf_counter() - middle))

    print(f"\n{'image':>10} {'max|d| margins':>15} {'max|d| deltas':>14} {'same best':>10}")
    for record, row in zip(records, agreement, strict=True):
        deltas = f"{row['deltas']:.2e}" if "deltas" in row else "-"
        print(f"{record.image_id:>10} {row['scores']:>15.2e} {deltas:>14} {row['same best']!s:>10}")
    scores = np.median([row["median |score|"] for row in agreement])
    print(f"(median |margin| {scores:.3f}", end="")
    if "max |delta|" in agreement[0]:
        print(f", |deltas| up to {max(row['max |delta|'] for row in agreement):.3f}", end="")
    print(")")

    times = np.array(pairs)
    torch_parts = np.median(np.array(parts), 0)
    print(
        f"\nseconds per image, {args.windows} windows at scale {scale}, "
        f"median of {len(times)} interleaved pairs"
    )
    print(f"{'onnxruntime':>12} {np.median(times[:, 0]):7.3f}")
    detail = ", ".join(f"{n} {s:.3f}" for n, s in zip(TORCH_PARTS, torch_parts, strict=True))
    print(f"{'PyTorch':>12} {np.median(times[:, 1]):7.3f}   ({detail})")
    print(
        f"ratio onnxruntime / PyTorch per pair, median {np.median(times[:, 0] / times[:, 1]):.2f}"
    )
    print(f"load at end {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--work", type=Path, help="a trained work folder")
    source.add_argument("--model", type=Path, help="a model FILE from `sppdet export`")
    parser.add_argument(
        "--onnx", type=Path, help="its ONNX export (default: export to a temporary file)"
    )
    parser.add_argument("--data", default="../shared/data/raccoon-voc", help="VOC root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs per image")
    args = parser.parse_args()
    if args.work is not None:
        model = model_from_work(WorkDir.at(args.work))
    else:
        model = read_model_file(args.model)
    if args.onnx is not None:
        run(args, args.onnx, model)
        return
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        started = time.perf_counter()
        path = export_onnx(model, Path(scratch) / "model.onnx", str(args.work or args.model))
        print(f"exported to a temporary file in {time.perf_counter() - started:.1f} s")
        run(args, path, model)


if __name__ == "__main__":
    main()
