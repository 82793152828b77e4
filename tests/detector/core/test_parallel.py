"""Executor choice without a cluster: option checks, a missing Ray, and shard writes that stay
exact when two attempts write the same shard (a retried task whose first attempt still ran)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor, map_shards

load_commands()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["cache-features", "--ray-address", "auto"], "--ray-address is for --executor ray"),
        (["propose", "--executor", "spark"], "--executor 'spark': choose local or ray"),
        (["detect", "--executor", "dask"], "--executor 'dask': choose local or ray"),
    ],
)
def test_executor_options_are_checked_first(tmp_path, capsys, command, message) -> None:
    args = [*command, "--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w")]
    assert run_app(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sppdet: error: ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "w").exists()


def test_workers_are_for_the_local_executor(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray") or object())
    with pytest.raises(SppdetError, match="--workers is for --executor local"):
        Executor("ray", workers=2)
    assert Executor("local", workers=3).describe() == "3 worker(s)"
    assert Executor("ray", address="auto").describe() == "Ray (auto)"


@pytest.mark.parametrize("command", ["propose", "cache-features", "detect"])
def test_without_ray_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    args = [command, "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--executor", "ray"]
    assert run_app(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "sppdet: error: --executor ray needs Ray, not installed here: "
        "pip install 'sppdet[ray]' (or pip install 'ray>=2.9')\n"
    )
    assert not (tmp_path / "w").exists()  # refused before any work


IDS = ["a", "b", "c", "d", "e"]


def _fill(writer: ShardWriter, image_ids: list[str]) -> None:
    for i, image_id in enumerate(image_ids):
        writer.put(image_id, "x", np.full((3, 2), i, np.float32), compression="gzip")
        writer.set_image_attrs(image_id, n=i)


def test_two_attempts_at_one_shard_leave_one_exact_shard(tmp_path: Path) -> None:
    """A second attempt starts while the first is still writing (as when a node is lost and its
    task retried elsewhere while the first attempt lives on): each builds its shard in memory
    (nothing on disk while it fills), both renames succeed, and the store holds the shard once,
    complete."""
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": 1}, IDS, shard_size=2)
    temporaries: list[list[str]] = []

    def first_attempt(writer: ShardWriter, image_ids: list[str]) -> None:
        _fill(writer, image_ids)
        store.write_shard(1, second_attempt)  # runs to its end inside the first attempt
        writer.set_image_attrs(image_ids[0], attempt=1)  # the first one is still writing

    def second_attempt(writer: ShardWriter, image_ids: list[str]) -> None:
        temporaries.append(sorted(p.name for p in store.root.glob("*.tmp-*")))
        _fill(writer, image_ids)
        writer.set_image_attrs(image_ids[0], attempt=2)

    store.write_shard(1, first_attempt)
    assert temporaries == [[]]  # both attempts still filling: no file of theirs on disk yet
    assert sorted(p.name for p in store.root.iterdir()) == ["shard-00001.h5", "store.json"]
    store.write_shard(0, _fill)
    store.write_shard(2, _fill)
    with ShardedStore.open(tmp_path / "s", "proposals", "test") as done:
        assert [done.image_attrs(i)["n"] for i in IDS] == [0, 1, 0, 1, 0]
        assert done.get("d", "x").tolist() == [[1, 1]] * 3
        assert done.image_attrs("c")["attempt"] == 1  # the last rename wins, whole


def test_a_rewritten_shard_replaces_the_old_one(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": 1}, IDS, shard_size=5)
    store.write_shard(0, _fill)
    before = store.shard_path(0).read_bytes()
    store.write_shard(0, _fill)  # a task run twice: same content under the same single name
    assert store.shard_path(0).read_bytes() == before
    assert sorted(p.name for p in store.root.iterdir()) == ["shard-00000.h5", "store.json"]


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
        f"import sys; sys.path.insert(0, {str(Path(__file__).parents[3])!r})\n"
        "from tests.detector.core.test_parallel import sleeping_worker\n"
        "from sppdet.detector.core.parallel import map_shards\n"
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
