"""Tests of ``sppdet.cache.atomic``: atomic output, orphaned temporaries, one-line failures."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sppdet.cache import atomic
from sppdet.cache.atomic import (
    ORPHAN_AGE_SECONDS,
    TMP_MARK,
    DamagedFile,
    atomic_output,
    environment_failure,
    read_json,
    read_torch,
    remove_stale_temporaries,
    temporary_path,
    write_bytes,
)
from sppdet.detector.core.errors import SppdetError


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class RunsCode:
    """Unpickling this calls os.system: what a hostile model file holds."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo this must never run",))


def test_atomic_output_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("new and partial")
        raise RuntimeError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_temporary_names_carry_pid_token_and_host(tmp_path: Path) -> None:
    first, second = temporary_path(tmp_path / "a.h5"), temporary_path(tmp_path / "a.h5")
    assert first != second  # a token per attempt
    prefix = f"a.h5{TMP_MARK}{os.getpid()}-"
    assert first.name.startswith(prefix) and first.name.endswith(f"-{socket.gethostname()}")


def test_only_orphaned_temporaries_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = dead_pid()
    names = {
        "dead": f"s.h5{TMP_MARK}{dead}-0a0b0c0d-{host}",  # its writer exited: orphan
        "legacy": f"s.h5{TMP_MARK}{dead}",  # an earlier sppdet's name, pid only: this host
        "mine": f"s.h5{TMP_MARK}{os.getpid()}-0a0b0c0d-{host}",  # a live writer: kept
        "remote": f"s.h5{TMP_MARK}{dead}-0a0b0c0d-another-host",  # cannot be asked: kept
        "old_remote": f"t.h5{TMP_MARK}{dead}-0a0b0c0d-another-host",  # too old: orphan
        "old_mine": f"t.h5{TMP_MARK}{os.getpid()}-0a0b0c0d-{host}",  # too old: orphan
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    long_ago = time.time() - ORPHAN_AGE_SECONDS - 60
    for key in ("old_remote", "old_mine"):
        os.utime(tmp_path / names[key], (long_ago, long_ago))
    assert remove_stale_temporaries(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["mine"], names["remote"]])


def test_environment_errors_become_one_line(tmp_path: Path) -> None:
    full = environment_failure(OSError(errno.ENOSPC, "No space left on device"), "w/x.h5")
    assert str(full).startswith("w/x.h5: no space left on device ; free space")
    assert "read-only" in str(environment_failure(OSError(errno.EROFS, "Read-only"), "w"))
    assert environment_failure(OSError(errno.ENOENT, "No such file"), "w") is None  # a bug


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "store.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(SppdetError) as caught:
        write_bytes(target, b"new")
    assert str(caught.value).startswith(f"{target}: no space left on device ; ")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.json"]
    assert target.read_text() == "old"


@pytest.mark.parametrize(
    ("content", "what"),
    [(b'{"a": 1,', "not JSON (Expecting property name"), (b"\xff\xfe{}", "not UTF-8 text")],
)
def test_damaged_json_is_one_line_with_the_fix(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFile) as caught:
        read_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: damaged, {what}")
    assert message.endswith(" ; remove it and rerun the stage that writes it")
    assert "\n" not in message
    with pytest.raises(ValueError):  # callers that tolerate a bad report catch ValueError
        read_json(path, "fix")


def test_a_model_holding_code_is_named_and_never_run(tmp_path: Path, capfd) -> None:
    path = tmp_path / "svm.pt"
    torch.save({"weights": RunsCode()}, path)
    with pytest.raises(DamagedFile) as caught:
        read_torch(path, "rerun `sppdet train-svm`")
    global_name = f"{os.system.__module__}.system"  # posix.system on Linux
    assert str(caught.value) == (
        f"{path}: holds code (a pickled global {global_name}), not a model; nothing in it was "
        "run ; rerun `sppdet train-svm`"
    )
    assert "this must never run" not in capfd.readouterr().out
    assert "weights_only" not in str(caught.value)  # torch's advice to turn it off is dropped


def test_other_unloadable_files_name_the_first_failure(tmp_path: Path) -> None:
    truncated = tmp_path / "bbox.pt"
    torch.save({"w": torch.zeros(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(DamagedFile, match=r"bbox.pt: not a readable model file \(Pytorch"):
        read_torch(truncated, "rerun")
    legacy_pickle = tmp_path / "plain.pt"
    legacy_pickle.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DamagedFile, match=r"plain.pt: not a readable model file .* ; rerun$"):
        read_torch(legacy_pickle, "rerun")
