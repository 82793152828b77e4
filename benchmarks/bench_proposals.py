"""Proposal benchmark: recall, boxes and speed of each method, with 1 and 2 worker processes.

For every method and worker count the split is proposed from scratch into a fresh work folder
(``sppdet propose``'s stage function), then scored like ``sppdet propose-recall``. Reported:
recall at IoU 0.5 / 0.7 with all boxes, average recall (IoU 0.5:0.95) at N = 100, 300, 1000,
2000, mean boxes per image, compute seconds per image inside a worker, wall-clock images per
second (pool start-up included), the throughput ratio of 2 workers over 1, and whether the
stores of the two runs are byte-identical.

Settings: the preset's ProposalConfig (``--preset``; released = R-CNN's, quick-cpu = the
defaults) with ``--max-boxes`` and any ``--set`` overrides. ``--crowded N`` benchmarks a generated
set of N small, crowded-object images (sppdet.detector.data.crowded, seed 0) instead of --data.

    python benchmarks/bench_proposals.py --data ../shared/data/raccoon-voc --split test \\
        --methods ss-rcnn,ss-fast,edgeboxes,ss+eb --workers 1,2 --json bench_proposals.json
    python benchmarks/bench_proposals.py --crowded 40 --split test --preset quick-cpu \\
        --methods ss-rcnn --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

# Spawned workers re-import this script as their __main__: keep its top level light (no torch),
# and import the pipeline inside the functions that run in the parent only.


def _burn(n: int) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def machine_parallelism(n: int = 10_000_000) -> float:
    """Throughput of 2 processes over 1 on a pure-Python loop: ~2.0 on two idle cores, lower when
    other jobs share the machine. Read the workers' speed-up against this figure."""
    one = _burn(n)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [1, 1])  # start-up is not what this measures
        start = time.perf_counter()
        pool.map(_burn, [n, n])
        two = time.perf_counter() - start
    return 2 * one / two


def store_digest(root: Path) -> str:
    """SHA-256 prefix of a store's shard files, to tell byte-identical stores apart."""
    digest = hashlib.sha256()
    for path in sorted(root.glob("shard-*.h5")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from sppdet.detector.core.config import ProposalConfig

    fields = {f.name: f for f in dataclasses.fields(ProposalConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {pair}: unknown ProposalConfig field {name!r}")
        default = getattr(ProposalConfig(), name)
        if isinstance(default, tuple):
            out[name] = tuple(type(default[0])(v) for v in text.split(","))
        elif isinstance(default, bool):
            out[name] = text.lower() in ("1", "true", "yes")
        else:
            out[name] = type(default)(text)
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.core.config import preset
    from sppdet.detector.data.datasets import load_dataset
    from sppdet.proposals.recall import measure_recall
    from sppdet.proposals.stage import run_proposals

    base = dataclasses.replace(preset(args.preset).proposals, **_overrides(args.set or []))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-proposals-") as scratch:
        if args.crowded:
            from sppdet.detector.data.crowded import make_crowded_voc

            args.data = make_crowded_voc(Path(scratch) / "crowded", args.crowded, seed=0)
        dataset = load_dataset(args.data, args.split)
        for method in args.methods.split(","):
            cfg = dataclasses.replace(base, method=method, max_boxes=args.max_boxes)
            for workers in (int(w) for w in args.workers.split(",")):
                work = WorkDir.at(Path(scratch) / f"{method}-{workers}")
                start = time.perf_counter()
                summary = run_proposals(dataset, work, cfg, workers=workers, progress=False)
                wall = time.perf_counter() - start
                report = measure_recall(dataset, work)
                rows.append(
                    {
                        "method": method,
                        "settings": {
                            k: v for k, v in dataclasses.asdict(cfg).items() if k != "method"
                        },
                        "workers": workers,
                        "images": summary.images,
                        "recall_0.5": report.recall["0.5"],
                        "recall_0.7": report.recall["0.7"],
                        "ar": report.average_recall,
                        "boxes_per_image": report.mean_boxes,
                        "seconds_per_image": summary.seconds_per_image,
                        "cpu_seconds_per_image": summary.cpu_seconds_per_image,
                        "wall_seconds": wall,
                        "images_per_second": summary.images / wall,
                        "digest": store_digest(work.proposals(args.split)),
                    }
                )
                print(f"done: {method} with {workers} worker(s) in {wall:.1f} s", flush=True)
    for row in rows:
        one = next(r for r in rows if r["method"] == row["method"] and r["workers"] == 1)
        row["speedup_vs_1"] = row["images_per_second"] / one["images_per_second"]
        row["same_bytes_as_1"] = row["digest"] == one["digest"]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'method':10s} {'wk':>2s} {'R@0.5':>6s} {'R@0.7':>6s} {'AR100':>6s} {'AR300':>6s} "
        f"{'AR1000':>6s} {'AR2000':>6s} {'boxes':>6s} {'s/img':>6s} {'cpu/im':>6s} {'img/s':>6s} "
        f"{'x1wk':>5s} same"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ar = r["ar"]
        print(
            f"{r['method']:10s} {r['workers']:2d} {r['recall_0.5']:6.3f} {r['recall_0.7']:6.3f} "
            f"{ar['100']:6.3f} {ar['300']:6.3f} {ar['1000']:6.3f} {ar['2000']:6.3f} "
            f"{r['boxes_per_image']:6.0f} {r['seconds_per_image']:6.3f} "
            f"{r['cpu_seconds_per_image']:6.3f} "
            f"{r['images_per_second']:6.2f} {r['speedup_vs_1']:5.2f} {r['same_bytes_as_1']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/raccoon-voc", help="VOC root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--methods", default="ss-rcnn,ss-fast,edgeboxes,ss+eb")
    parser.add_argument("--preset", default="released", help="whose ProposalConfig to start from")
    parser.add_argument(
        "--crowded", type=int, default=0, metavar="N",
        help="benchmark a generated crowded-object set of N images instead of --data",
    )  # fmt: skip
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--max-boxes", type=int, default=2000)
    parser.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="override a ProposalConfig field, e.g. --set eb_beta=0.8 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=Path("bench_proposals.json"))
    args = parser.parse_args()
    before = machine_parallelism()
    rows = run(args)
    after = machine_parallelism()
    print_table(rows)
    print(
        f"2-process throughput of a pure-Python loop (machine load check): {before:.2f} before, "
        f"{after:.2f} after (2.00 = two idle cores)"
    )
    meta = {
        "data": f"crowded set, {args.crowded} images, seed 0" if args.crowded else str(args.data),
        "split": args.split,
        "preset": args.preset,
        "overrides": args.set or [],
        "opencv": cv2.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
        "loop_parallelism_before_after": [before, after],
    }
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
