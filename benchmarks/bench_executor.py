"""Executor benchmark: proposals with the local executor and with Ray at 1 and 2 CPUs, as images/s,
the overhead Ray adds per shard task, and the shard size that keeps it under 5% of task time.

Each run proposes the split from scratch into a fresh work folder (``sppdet propose``'s stage
function). Local runs use 1 and 2 worker processes (pool start-up included). For Ray at N CPUs a
local cluster is started with ``ray.init(num_cpus=N)`` (start-up reported, not counted), then:

- no-op tasks: ``--noop-tasks`` shard tasks that return at once, after a warm-up round that
  starts the workers. Overhead per task = N x wall / tasks: the CPU-slot time a task costs
  beyond its own work (scheduling, argument and result transfer, the driver's bookkeeping);
- the proposals run. Overhead per task = (N x wall - sum of in-task compute seconds) / tasks:
  the same plus each worker's first import of the stage and the shard file writes.

With a per-image compute time t (the local 1-worker run's) and an overhead o per task, a shard
of S images loses o / (S t) to overhead: below 5% from S = 20 o / t. Both estimates are printed.

    python benchmarks/bench_executor.py --data ../shared/data/raccoon-voc --split test \\
        --method ss-fast --shard-size 4 --cpus 1,2 --json bench_executor.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_proposals import store_digest  # the sibling script, importable when run as a script

# Spawned local workers re-import this script as their __main__: keep its top level light.

OVERHEAD_BUDGET = 0.05


def noop_shard(root: str, shard: int, settings: dict[str, Any]) -> int:
    """A shard task that does nothing: what is left of its time is the executor's."""
    return shard


def _propose(args: argparse.Namespace, work_root: Path, executor: Any) -> dict[str, Any]:
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.core.config import preset
    from sppdet.detector.data.datasets import load_dataset
    from sppdet.proposals.stage import run_proposals

    dataset = load_dataset(args.data, args.split)
    cfg = dataclasses.replace(
        preset("released").proposals, method=args.method, shard_size=args.shard_size
    )
    work = WorkDir.at(work_root)
    start = time.perf_counter()
    summary = run_proposals(dataset, work, cfg, progress=False, executor=executor)
    wall = time.perf_counter() - start
    tasks = -(-summary.images // args.shard_size)
    return {
        "images": summary.images,
        "tasks": tasks,
        "wall_seconds": wall,
        "images_per_second": summary.images / wall,
        "seconds_per_image": summary.seconds_per_image,  # inside the tasks
        "task_seconds": summary.seconds_per_image * summary.images,
        "digest": store_digest(work.proposals(args.split)),
    }


def _noop_overhead(executor: Any, cpus: int, tasks: int, scratch: Path) -> float:
    from sppdet.detector.core.parallel import map_shards

    list(map_shards(noop_shard, str(scratch), range(2 * cpus), {}, executor=executor))  # warm-up
    start = time.perf_counter()
    done = list(map_shards(noop_shard, str(scratch), range(tasks), {}, executor=executor))
    wall = time.perf_counter() - start
    assert sorted(s for s, _ in done) == list(range(tasks))
    return cpus * wall / tasks


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    import ray

    from sppdet.detector.core.parallel import Executor

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-executor-") as scratch:
        for workers in (int(w) for w in args.local_workers.split(",")):
            row = _propose(args, Path(scratch) / f"local-{workers}", Executor("local", workers))
            rows.append({"executor": "local", "cpus": workers, **row})
            print(f"done: local, {workers} worker(s), {row['wall_seconds']:.1f} s", flush=True)
        for cpus in (int(c) for c in args.cpus.split(",")):
            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
            started = time.perf_counter() - start
            try:
                executor = Executor("ray")
                noop = _noop_overhead(executor, cpus, args.noop_tasks, Path(scratch))
                row = _propose(args, Path(scratch) / f"ray-{cpus}", executor)
            finally:
                ray.shutdown()
            rows.append(
                {"executor": "ray", "cpus": cpus, "ray_start_seconds": started,
                 "noop_overhead_per_task": noop, **row}
            )  # fmt: skip
            print(f"done: ray, {cpus} CPU(s), {row['wall_seconds']:.1f} s", flush=True)
    base = rows[0]
    per_image = base["seconds_per_image"]
    for row in rows:
        row["speedup_vs_local_1"] = row["images_per_second"] / base["images_per_second"]
        row["same_bytes_as_local_1"] = row["digest"] == base["digest"]
        slot_seconds = row["cpus"] * row["wall_seconds"]
        row["run_overhead_per_task"] = (slot_seconds - row["task_seconds"]) / row["tasks"]
        for key in ("noop_overhead_per_task", "run_overhead_per_task"):
            if key in row:
                name = key.replace("overhead_per_task", "shard_size_for_5pct")
                row[name] = math.ceil(max(row[key], 0.0) / (OVERHEAD_BUDGET * per_image))
    return rows, per_image


def print_table(rows: list[dict[str, Any]], per_image: float, shard_size: int) -> None:
    header = (
        f"{'executor':8s} {'cpus':>4s} {'tasks':>5s} {'wall s':>7s} {'img/s':>6s} {'x local1':>8s} "
        f"{'s/img':>6s} {'ovh/task run':>12s} {'ovh/task noop':>13s} {'S 5% run':>8s} "
        f"{'S 5% noop':>9s} same"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        noop = r.get("noop_overhead_per_task")
        print(
            f"{r['executor']:8s} {r['cpus']:4d} {r['tasks']:5d} {r['wall_seconds']:7.2f} "
            f"{r['images_per_second']:6.2f} {r['speedup_vs_local_1']:8.2f} "
            f"{r['seconds_per_image']:6.3f} {r['run_overhead_per_task']:12.4f} "
            f"{'' if noop is None else f'{noop:.4f}':>13s} {r['run_shard_size_for_5pct']:8d} "
            f"{r.get('noop_shard_size_for_5pct', ''):>9} {r['same_bytes_as_local_1']}"
        )
    print(
        f"shard size {shard_size}; in-task compute {per_image:.3f} s/image (local, 1 worker); "
        f"'S 5%': smallest shard size (images) whose overhead stays under "
        f"{OVERHEAD_BUDGET:.0%} of the task's compute time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/raccoon-voc", help="VOC root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--method", default="ss-fast")
    parser.add_argument("--shard-size", type=int, default=4, help="images per shard task")
    parser.add_argument("--local-workers", default="1,2", help="local worker counts (first: 1)")
    parser.add_argument("--cpus", default="1,2", help="CPUs of the local Ray cluster per run")
    parser.add_argument("--noop-tasks", type=int, default=200)
    parser.add_argument("--json", type=Path, default=Path("bench_executor.json"))
    args = parser.parse_args()
    if not args.local_workers.startswith("1"):
        parser.error("--local-workers must start with 1: the reference run")
    load_before = os.getloadavg()
    rows, per_image = run(args)
    load_after = os.getloadavg()
    print_table(rows, per_image, args.shard_size)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    import ray

    meta = {
        "data": str(args.data),
        "split": args.split,
        "method": args.method,
        "shard_size": args.shard_size,
        "ray": ray.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_before_after": [load_before[0], load_after[0]],
        "seconds_per_image": per_image,
    }
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
