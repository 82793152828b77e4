"""Two writers of one store: the second is refused naming the first (pid and host), or waits with
--wait; two runs started together never take each other's files and end with the exact store."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from tests.faults.shared import (
    ENV,
    QUICK_FEATURES,
    QUICK_PROPOSALS,
    error_line,
    run_here,
    start_cli,
    store_files,
)

# Holds the writer lock of the store at argv[1], made with its own settings, for argv[2] seconds,
# and says when it lets go.
HOLDER = (
    "import json, sys, time\n"
    "from sppdet.cache.shards import ShardedStore\n"
    "index = json.load(open(sys.argv[1] + '/store.json'))\n"
    "store = ShardedStore.create(sys.argv[1], index['kind'], index['params'], "
    "index['image_ids'], index['shard_size'])\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "store.release()\n"
    "print(time.time(), flush=True)\n"
)

STAGES = {
    "propose": (QUICK_PROPOSALS, WorkDir.proposals),
    "cache-features": (QUICK_FEATURES, WorkDir.features),
}


def _args(stage: str, voc: Path, work: Path) -> list[str]:
    return [stage, "--data", str(voc), "--work", str(work), *STAGES[stage][0]]


def _store(stage: str, work: Path) -> Path:
    return STAGES[stage][1](WorkDir.at(work), "trainval")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_second_writer_is_refused_or_waits(stage, voc, tmp_path, capfd, caplog) -> None:
    work = tmp_path / "work"
    assert run_here(_args(stage, voc, work)) == 0
    root = _store(stage, work)
    built = store_files(root)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), "4"], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        capfd.readouterr()
        message = error_line(run_here(_args(stage, voc, work)), capfd.readouterr().err)
        assert message.startswith(
            f"{root}: being written by process {holder.pid} on {socket.gethostname()} (since "
        )
        assert message.endswith(
            " ; wait for it to finish, rerun with --wait to start when it does, or stop that "
            "process"
        )
        with caplog.at_level(logging.WARNING, "sppdet.cache.shards"):
            assert run_here([*_args(stage, voc, work), "--wait"]) == 0
        finished = time.time()
        assert f"being written by process {holder.pid}" in caplog.text
        assert float(holder.stdout.readline()) <= finished  # it ran once the holder let go
    finally:
        holder.kill()
        holder.wait()
    assert store_files(root) == built


@pytest.mark.parametrize("stage", list(STAGES))
def test_two_runs_started_together_both_finish_the_same_store(stage, voc, tmp_path) -> None:
    work = tmp_path / "work"
    runs = [start_cli([*_args(stage, voc, work), "--wait"]) for _ in range(2)]
    outcomes = [run.communicate(timeout=300) for run in runs]
    for run, (_, err) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, err
        assert "Traceback" not in err and "FileNotFoundError" not in err
    root = _store(stage, work)
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]
    clean = tmp_path / "clean"
    assert run_here(_args(stage, voc, clean)) == 0
    assert store_files(root) == store_files(_store(stage, clean))
    assert os.path.exists(root.parent / f".{root.name}.lock")  # beside the store, not in it
