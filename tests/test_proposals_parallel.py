"""The local shard executor (sppdet.detector.parallel): threads, results, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from sppdet.detector.parallel import map_shards


def report_worker(
    root: str, shard: int, settings: dict[str, Any]
) -> tuple[int, int, str, int, str]:
    # Module-level, so spawned workers can import it by name.
    return (
        os.getpid(),
        cv2.getNumThreads(),
        os.environ.get("OMP_NUM_THREADS", ""),
        shard * settings["k"],
        root,
    )


def failing_worker(root: str, shard: int, settings: dict[str, Any]) -> int:
    if shard == settings["bad"]:
        raise ValueError(f"shard {shard} failed")
    return shard


def test_pool_workers_run_every_shard_with_one_thread() -> None:
    results = dict(map_shards(report_worker, "store-root", range(6), {"k": 10}, workers=2))
    assert sorted(results) == list(range(6))
    pids = {r[0] for r in results.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {(r[1], r[2], r[4]) for r in results.values()} == {(1, "1", "store-root")}
    assert sorted(r[3] for r in results.values()) == [0, 10, 20, 30, 40, 50]


def test_in_process_run_limits_threads_and_restores_them() -> None:
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        results = list(map_shards(report_worker, "r", [4, 1], {"k": 1}, workers=1))
        assert [(shard, r[0], r[1], r[3]) for shard, r in results] == [
            (4, os.getpid(), 1, 4),
            (1, os.getpid(), 1, 1),
        ]
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_task_raises_in_the_caller(workers: int) -> None:
    with pytest.raises(ValueError, match="shard 3 failed"):
        list(map_shards(failing_worker, "r", range(5), {"bad": 3}, workers=workers))


def test_no_shards_no_work() -> None:
    assert list(map_shards(failing_worker, "r", [], {"bad": 0}, workers=4)) == []


def sleeping_worker(root: str, shard: int, settings: dict[str, Any]) -> int:
    (Path(root) / f"{os.getpid()}.pid").write_text("")
    time.sleep(60)
    return shard


def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_proposals_parallel import sleeping_worker\n"
        "from sppdet.detector.parallel import map_shards\n"
        f"list(map_shards(sleeping_worker, {str(tmp_path)!r}, range(4), {{}}, workers=2))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2
    parent.kill()  # SIGKILL: no chance to stop the pool
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # an exited child may linger as a zombie
    return not (status.exists() and "zombie" in status.read_text())
