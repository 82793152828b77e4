"""kill -9 at random points of propose and cache-features, then a resume: the store must come out
byte-identical to an uninterrupted run's (index, shards, no temporaries left)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from tests.faults.shared import (
    QUICK_FEATURES,
    QUICK_PROPOSALS,
    run_here,
    start_cli,
    store_files,
)

STAGES = {  # options, the store it writes, the store's kind
    "propose": (QUICK_PROPOSALS, WorkDir.proposals, "proposals"),
    "cache-features": (QUICK_FEATURES, WorkDir.features, "features"),
}
KILLS = 2  # per stage, each at its own random moment of the run
STARTUP_SECONDS = 120  # for the killed process to get as far as its store (imports, a loaded CI)
KILL_WITHIN = 0.8  # of the time an uninterrupted run takes here, from the store's creation


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_then_resume_gives_the_uninterrupted_bytes(stage, voc, tmp_path) -> None:
    options, store_of, kind = STAGES[stage]
    clean = tmp_path / "clean"
    start = time.perf_counter()
    assert run_here([stage, "--data", str(voc), "--work", str(clean), *options]) == 0
    seconds = time.perf_counter() - start
    expected = store_files(store_of(WorkDir.at(clean), "trainval"))
    chance = random.Random(f"{stage}-kill-9")  # the same moments on every run of the suite
    interrupted = 0
    for attempt in range(KILLS):
        work = tmp_path / f"killed-{attempt}"
        root = store_of(WorkDir.at(work), "trainval")
        run = start_cli([stage, "--data", str(voc), "--work", str(work), *options])
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (root / "store.json").exists() and run.poll() is None:
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.01)
        time.sleep(chance.uniform(0, KILL_WITHIN * seconds))  # somewhere in the run
        run.send_signal(signal.SIGKILL)
        run.communicate()
        with ShardedStore.open(root, kind, "test", require_complete=False) as killed:
            interrupted += bool(killed.pending_shards())
        assert run_here([stage, "--data", str(voc), "--work", str(work), *options]) == 0
        assert store_files(root) == expected, f"kill {attempt} of {stage}"
    assert interrupted, "no kill landed before the last shard: the test tested nothing"
