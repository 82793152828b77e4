"""Pre-training an SPP classifier (paper §2.3, §3): single-size against multi-size training, and
centre-crop against full-image and multi-view evaluation, on raccoon crops.

Trains the same trunk twice on the object and background crops (K+1 = 2 classes) of a detection
dataset's training split, once at one input size (224) and once alternating sizes per epoch
(180, 224), with the same epochs, seed and every other setting; then evaluates both on the crops
of the test split under four views: the centre 224 crop, the full region with its shorter side
256 (the paper's Table 3 setting) and 224, and 10 views on the conv5 maps. Reports seconds per
epoch at each size. Checkpoints are written under --work and resumed when the script is rerun.

    python benchmarks/bench_pretrain.py [--data ../shared/data/raccoon-voc] [--epochs 12]
        [--fc-dim 1024] [--batch-size 16] [--threads N] [--work /tmp/bench_pretrain]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.atomic import write_json
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.pretrain.classify import classify_eval
from sppdet.detector.pretrain.train import pretrain

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon-voc"


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def run(args: argparse.Namespace, name: str, train_sizes: tuple[int, ...]) -> dict[str, Any]:
    cfg = dataclasses.replace(
        PretrainConfig(),
        backbone=args.backbone,
        sizes=train_sizes,
        epochs=args.epochs,
        fc_dim=args.fc_dim,
        batch_size=args.batch_size,
        base_lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        device="cpu",
    )
    out = args.work / f"{name}.pt"
    print(f"== {name}: sizes {','.join(map(str, train_sizes))}, {args.epochs} epochs")
    result = pretrain(args.data, out, cfg, args.train_split, progress=False, log=print)
    per_size: dict[int, list[float]] = {}
    for record in result.history:
        per_size.setdefault(record["size"], []).append(record["seconds"])
    # The default evaluation gives the centre crop, the full view with the shorter side
    # size / 0.875 (256 for 224, the paper's Table 3) and the 10 views; a second one the full
    # view at the training size.
    size = max(train_sizes)
    paper = classify_eval(
        out, args.data, args.test_split, workers=args.workers, device="cpu", progress=False
    )
    small = classify_eval(
        out,
        args.data,
        args.test_split,
        full_side=size,
        workers=args.workers,
        device="cpu",
        progress=False,
    )
    side = paper.views.full_side
    evaluations = {
        f"centre crop {size}": paper.results["center"].to_json(),
        f"full image, shorter side {side}": paper.results["full"].to_json(),
        f"full image, shorter side {size}": small.results["full"].to_json(),
        f"10 views on conv5 (s = {side})": paper.results["multiview"].to_json(),
    }
    return {
        "sizes": list(train_sizes),
        "train_counts": result.train_counts,
        "heldout": result.heldout,
        "history": result.history,
        "seconds_per_epoch": {str(s): float(np.median(v)) for s, v in per_size.items()},
        "test_counts": paper.counts,
        "views": evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-split", default="trainval")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--backbone", default="zf5")
    parser.add_argument("--single", type=sizes, default=(224,))
    parser.add_argument("--multi", type=sizes, default=(180, 224))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--fc-dim", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_pretrain"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = {
        "single-size": run(args, "single", args.single),
        "multi-size": run(args, "multi", args.multi),
    }
    print()
    print(f"{'training':<12} {'view':<30} {'top-1 %':>8} {'mean class %':>13}")
    for name, r in runs.items():
        for view, e in r["views"].items():
            print(
                f"{name:<12} {view:<30} {100 * e['top1']:8.2f} {100 * e['mean_class_top1']:13.2f}"
            )
    print()
    for name, r in runs.items():
        timing = ", ".join(f"{s} px {t:.1f} s" for s, t in r["seconds_per_epoch"].items())
        print(f"{name}: seconds per epoch (median) {timing}; train crops {r['train_counts']}")
    report = {
        "benchmark": "pretrain",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
