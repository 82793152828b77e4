"""The whole pipeline on one device (issue 14): fine-tuning batches/s with the released head and
the share of time spent waiting for conv5 maps, detect seconds per image (proposals excluded) at
1 and 5 scales, and the released protocol's wall time on VOC 2007 extrapolated from rates
measured on a generated VOC-sized image set.

    python benchmarks/bench_gpu_pipeline.py --work /tmp/bench-gpu [--device auto] \\
        [--precision fp32] [--trainval 16] [--test 4] [--batches 40] [--out bench_gpu.json]

Everything runs through the stage functions the commands call (``run_proposals``,
``cache_features``, ``run_finetune``, ``run_train_svm``, ``run_train_bbox``, ``image_candidates``
+ ``select``) with the released preset and flipped images cached (both splits: the models refuse
a cache made with other settings), on --device. The images are drawn 375-500 px a side like
VOC's; the proposals are Selective Search "fast" (timed), which finds only a few hundred windows
on the generated shapes, so every image's windows are then topped up to 2,000 with random boxes
(as ``sppdet bench`` does) and imported as the proposals the later stages use. The head
is the released one (zf5 pool5 12,800 -> 4,096 -> 4,096 -> K+1, batch 128); the generated set
has 3 classes, so fc8 has 4 outputs instead of VOC's 21 (0.1% of the head's multiply-adds).
Rates are per image or per batch, so the extrapolation to VOC 2007 (5,011 trainval images with
flips, 4,952 test images, 200,000 batches) is linear; liblinear's retrains are counted in the
SVM stage's per-image time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.bench import bench_windows
from sppdet.detector.core.config import PipelineConfig, preset
from sppdet.detector.core.device import synchronize
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.detection.postprocess import select
from sppdet.detector.detection.scorer import image_candidates, load_window_scorer
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.heads.finetune import TrainState, WindowTable, train
from sppdet.detector.training.bbox import run_train_bbox
from sppdet.detector.training.finetune import RoundMaps, new_head, run_finetune
from sppdet.detector.training.inputs import SplitInputs, open_split
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import run_train_svm
from sppdet.proposals.stage import import_proposals, run_proposals
from sppdet.proposals.store import open_proposals

VOC07_TRAINVAL = 5_011
VOC07_TEST = 4_952
VOC_SIDES = (375, 500)  # generated images: width and height each drawn in this range
ONE_SCALE = (688,)
VOC_WINDOWS = 2_000  # windows per image: the released code's Selective Search gives about this


class Clock:
    """``heads.finetune.TrainClock``: the time of every batch after the first round's pooling."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_pooled: float | None = None
        self.done: list[float] = []

    def round_pooled(self, batches: int) -> None:
        if self.first_pooled is None:
            synchronize(self.device)
            self.first_pooled = time.perf_counter()

    def batch_done(self, iteration: int) -> None:
        self.done.append(time.perf_counter())


def timed(action: Any, device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    result = action()
    synchronize(device)
    return result, time.perf_counter() - start


def finetune_rate(work: WorkDir, data: Path, runtime: Runtime, batches: int) -> dict[str, float]:
    """Batches/s of the released head (batch 128) in steady state, and the share of the loop's
    time spent waiting for conv5 maps (the reader thread reads the next round meanwhile)."""
    cfg = dataclasses.replace(preset("released").finetune, iterations=batches)
    inputs = open_split(work, data, "trainval", device=runtime.device)
    head, _ = new_head(work, inputs, cfg)
    table = WindowTable.build(
        inputs.dataset.records, inputs.proposals, len(inputs.dataset.classes), cfg
    )
    inputs.cache.keep_images(cfg.images_per_round)
    reader, clock = RoundMaps(inputs.cache, table), Clock(runtime.device)
    start = time.perf_counter()
    train(
        head,
        inputs.cache,
        table,
        cfg,
        TrainState(0, 0, []),
        None,
        lambda *_: None,
        clock=clock,
        device=runtime.device,
        precision=runtime.precision,
        reader=reader,
    )
    synchronize(runtime.device)
    loop = time.perf_counter() - start
    steady = len(clock.done) - 1
    return {
        "batches": len(clock.done),
        "batch_size": cfg.batch_size,
        "fc_dim": head.fc7.out_features,
        "in_dim": inputs.cache.dim,
        "batches_per_s": steady / (clock.done[-1] - clock.done[0]),
        "batches_per_s_with_first_round": len(clock.done) / loop,
        "data_wait_share": reader.wait_seconds / loop,
    }


def detect_seconds(
    work: WorkDir, data: Path, runtime: Runtime, scales: tuple[int, ...]
) -> dict[str, float]:
    """Seconds per test image without proposals at SCALES: the conv5 pass (cache-features
    without flips, per image) plus reading the maps, pooling, fc6/fc7, SVMs, regression and
    NMS. The heads come from WORK's models; their cost does not depend on the scales."""
    test_inputs = open_split(work, data, "test", device=runtime.device)
    detector = load_window_scorer(work, test_inputs, preset("released").detect, True, runtime)
    dataset = test_inputs.dataset
    scratch = WorkDir.at(work.root.parent / f"{work.root.name}-{len(scales)}scale")
    shutil.rmtree(scratch.root, ignore_errors=True)  # a finished cache would not be recomputed
    features = dataclasses.replace(
        preset("released").features, scales=scales, device=str(runtime.device)
    )
    _, conv_total = timed(
        lambda: cache_features(dataset, scratch, features, force=True, progress=False),
        runtime.device,
    )
    cache = FeatureCache.open(scratch, "test", device=runtime.device)
    inputs = SplitInputs(dataset, open_proposals(work, "test").boxes, cache, "")
    seconds = []
    for record in dataset.records:

        def one_image(image_id: str = record.image_id) -> object:
            return select(image_candidates(inputs, detector, image_id), detector.cfg)

        seconds.append(timed(one_image, runtime.device)[1])
    # The first image pays one-time costs (allocations, kernel choice): left out when possible.
    rest = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))
    conv = conv_total / len(dataset)
    return {"conv": conv, "rest": rest, "total": conv + rest}


def voc_windows(
    work: WorkDir, splits: dict[str, Dataset], mat: Path, cfg: PipelineConfig
) -> dict[str, dict[str, float]]:
    """Give every image VOC_WINDOWS windows: Selective Search finds far fewer on the generated
    shapes than on VOC photographs, and the later stages' cost grows with the windows. Each
    image's proposals are topped up with random boxes (``bench.bench_windows``, as `sppdet
    bench` does) and imported as the proposals. Returns the windows per image before and
    after."""
    counts: dict[str, dict[str, float]] = {}
    for name, dataset in splits.items():
        with open_proposals(work, name) as store:
            found = {r.image_id: store.boxes(r.image_id) for r in dataset.records}
        windows = {
            r.image_id: bench_windows(found[r.image_id], VOC_WINDOWS, r.height, r.width, seed=i)
            for i, r in enumerate(dataset.records)
        }
        ids = np.empty((1, len(windows)), object)
        boxes = np.empty((1, len(windows)), object)
        for i, (image_id, xyxy) in enumerate(windows.items()):
            ids[0, i] = image_id
            boxes[0, i] = (
                xyxy[:, [1, 0, 3, 2]].astype(np.float64) + 1
            )  # R-CNN: y1 x1 y2 x2, 1-based
        scipy.io.savemat(mat, {"images": ids, "boxes": boxes})
        import_proposals(dataset, work, mat, min_side=cfg.proposals.min_side, force=True)
        with open_proposals(work, name) as store:
            after = [len(store.boxes(r.image_id)) for r in dataset.records]
        counts[name] = {
            "selective_search": float(np.mean([len(b) for b in found.values()])),
            "used": float(np.mean(after)),
        }
    return counts


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            cpu,
        )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
    }


def per_image_seconds(action: Any, images: int, device: torch.device) -> float:
    return timed(action, device)[1] / images


def measure(args: argparse.Namespace, runtime: Runtime, done: dict[str, Any], save: Any) -> None:
    """Every part not in DONE yet, each saved as soon as it is measured (SAVE)."""
    cfg = preset("released")
    data, work = args.work / "data", WorkDir.at(args.work / "work")
    splits = {name: load_dataset(data, name) for name in ("trainval", "test")}
    # Flipped images are cached for both splits, as `cache-features --flip` does: the models
    # refuse a cache made with other settings.
    features = dataclasses.replace(cfg.features, flip=True, device=str(runtime.device))
    parts: dict[str, Any] = {}
    for name, d in splits.items():
        parts[f"proposals_{name}"] = lambda d=d: per_image_seconds(
            lambda: run_proposals(d, work, cfg.proposals, force=True, progress=False),
            len(d),
            runtime.device,
        )
        parts[f"cache_{name}"] = lambda d=d: per_image_seconds(
            lambda: cache_features(d, work, features, force=True, progress=False),
            len(d),
            runtime.device,
        )
    parts["windows"] = lambda: voc_windows(work, splits, args.work / "windows.mat", cfg)
    parts["finetune"] = lambda: finetune_rate(work, data, runtime, args.batches)
    n_train = len(splits["trainval"])

    def svm() -> float:
        # A short fine-tuning gives the fc7 the SVMs need; its quality does not change the time.
        short = dataclasses.replace(cfg.finetune, iterations=8)
        run_finetune(work, open_split(work, data, "trainval"), short, runtime=runtime)
        inputs = open_split(work, data, "trainval")
        return per_image_seconds(
            lambda: run_train_svm(work, inputs, cfg.svm, force=True, runtime=runtime),
            n_train,
            runtime.device,
        )

    parts["train_svm"] = svm
    parts["train_bbox"] = lambda: per_image_seconds(
        lambda: run_train_bbox(
            work, open_split(work, data, "trainval"), cfg.bbox, force=True, runtime=runtime
        ),
        n_train,
        runtime.device,
    )
    parts["detect_5"] = lambda: detect_seconds(work, data, runtime, cfg.features.scales)
    parts["detect_1"] = lambda: detect_seconds(work, data, runtime, ONE_SCALE)
    for name, action in parts.items():
        if name not in done:
            done[name] = action()
            save()


def voc07_hours(done: dict[str, Any]) -> dict[str, float]:
    """The released protocol on VOC 2007 at the measured rates, in hours per stage."""
    seconds = {
        "cache_features": VOC07_TRAINVAL * done["cache_trainval"] + VOC07_TEST * done["cache_test"],
        "finetune": preset("released").finetune.iterations / done["finetune"]["batches_per_s"],
        "train_svm": VOC07_TRAINVAL * done["train_svm"],
        "train_bbox": VOC07_TRAINVAL * done["train_bbox"],
        "detect": VOC07_TEST * done["detect_5"]["rest"],
    }
    hours = {k: v / 3600 for k, v in seconds.items()}
    hours["total_without_proposals"] = sum(hours.values())
    proposals = VOC07_TRAINVAL * done["proposals_trainval"] + VOC07_TEST * done["proposals_test"]
    hours["proposals"] = proposals / 3600
    return hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--trainval", type=int, default=16, help="Generated trainval images.")
    parser.add_argument("--test", type=int, default=4, help="Generated test images.")
    parser.add_argument("--batches", type=int, default=40, help="Fine-tuning batches timed.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runtime = Runtime.create(args.device, args.precision, "released")
    total = args.trainval + args.test
    data = args.work / "data"
    if not (data / "ImageSets").is_dir():
        make_synthetic_voc(
            data, num_images=total, seed=14, image_size=VOC_SIDES, test_fraction=args.test / total
        )
    # Parts already measured (an interrupted run) are kept in PARTIAL and not measured again.
    partial = args.work / "partial.json"
    done: dict[str, Any] = json.loads(partial.read_text()) if partial.is_file() else {}
    before = machine(runtime.device)
    measure(args, runtime, done, lambda: partial.write_text(json.dumps(done, indent=2)))
    report = {
        "device": runtime.describe(),
        "machine_before": before,
        "measured": done,
        "voc07_released_hours": voc07_hours(done),
        "machine_after": machine(runtime.device),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
