"""Faults of the environment: a full disk and a read-only work folder.

Each stage must end in one line `sppdet: error: <file>: <what> ; <fix>` with exit code 2 (no
segfault inside libhdf5, no traceback), leave nothing half-written that a reader would take as
valid, keep the earlier stages' outputs, and finish the work when rerun with room to write.
"""

from __future__ import annotations

import json
from pathlib import Path

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from tests.faults.conftest import fill_disk
from tests.faults.shared import (
    QUICK_PROPOSALS,
    error_line,
    run_cli,
    run_here,
    store_files,
)

BIG_FEATURES = ["--scales", "160", "--device", "cpu", "--dtype", "float32"]  # ~270 KB a shard


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_a_full_disk_stops_propose_with_one_line(voc, small_disk, tmp_path) -> None:
    work = small_disk / "work"
    filler = fill_disk(small_disk, leave=40_000)  # less than two 24 KB shards and the index
    failed = run_cli(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS])
    message = error_line(failed.returncode, failed.stderr)
    assert "no space left on device ; free space on that filesystem" in message
    _no_temporaries(work)
    root = WorkDir.at(work).proposals("trainval")
    if (root / "store.json").exists():  # what was finished is whole and recorded
        assert not ShardedStore.check(root).damaged
    filler.unlink()
    assert run_here(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS]) == 0
    clean = tmp_path / "clean"
    assert run_here(["propose", "--data", str(voc), "--work", str(clean), *QUICK_PROPOSALS]) == 0
    assert store_files(root) == store_files(WorkDir.at(clean).proposals("trainval"))


def test_a_full_disk_stops_cache_features_and_keeps_the_proposals(voc, small_disk) -> None:
    work = small_disk / "work"
    assert run_here(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS]) == 0
    proposals = WorkDir.at(work).proposals("trainval")
    before = store_files(proposals)
    filler = fill_disk(small_disk, leave=200_000)  # less than one feature shard
    failed = run_cli(["cache-features", "--data", str(voc), "--work", str(work), *BIG_FEATURES])
    message = error_line(failed.returncode, failed.stderr)
    assert message.startswith(f"{WorkDir.at(work).features('trainval')}/shard-00000.h5: no space")
    _no_temporaries(work)
    assert store_files(proposals) == before and ShardedStore.check(proposals).ok
    assert "propose:trainval" in json.loads((work / "settings.json").read_text())
    filler.unlink()
    assert run_here(["cache-features", "--data", str(voc), "--work", str(work), *BIG_FEATURES]) == 0
    assert ShardedStore.check(WorkDir.at(work).features("trainval")).ok


def test_a_read_only_work_folder_is_one_line_and_readers_still_work(
    voc, tmp_path, make_read_only, capfd
) -> None:
    work = tmp_path / "work"
    assert run_here(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS]) == 0
    before = store_files(WorkDir.at(work).proposals("trainval"))
    make_read_only(work)
    capfd.readouterr()
    code = run_here(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS])
    message = error_line(code, capfd.readouterr().err)
    assert message.startswith(f"{work / 'proposals' / 'trainval'}: ")
    assert ("read-only file system ; " in message) or ("permission denied ; " in message)
    code = run_here(["cache-features", "--data", str(voc), "--work", str(work), "--scales", "64"])
    assert error_line(code, capfd.readouterr().err).startswith(f"{work / 'features'}")
    assert run_here(["verify", "--work", str(work)]) == 0  # reading needs no write access
    assert store_files(WorkDir.at(work).proposals("trainval")) == before
