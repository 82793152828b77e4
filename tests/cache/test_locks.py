"""Tests of ``sppdet.cache.locks``: one writer per store, refused or waited for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sppdet.cache.locks import wait_requested, waiting_for_writers
from sppdet.cache.shards import ShardedStore

CREATE = (
    "import sys\n"
    "from sppdet.cache.locks import waiting_for_writers\n"
    "from sppdet.cache.shards import ShardedStore\n"
    "with waiting_for_writers(sys.argv[2] == 'wait'):\n"
    "    ShardedStore.create(sys.argv[1], 'proposals', {'m': 'ss'}, ['a', 'b'], 1)\n"
    "print('created')"
)


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, ["a", "b"], 1)
    again = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, ["a", "b"], 1)
    del again  # the same process may open it again; its lock outlives this second handle
    other = subprocess.run(
        [sys.executable, "-c", CREATE, str(tmp_path / "s"), "refuse"],
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0 and "created" not in other.stdout
    message = other.stderr.strip().splitlines()[-1]
    assert f"s: being written by process {os.getpid()} on {socket.gethostname()} (since " in message
    assert message.endswith("; wait for it to finish, rerun with --wait to start when it does, "
                            "or stop that process")  # fmt: skip
    store.release()
    done = subprocess.run(
        [sys.executable, "-c", CREATE, str(tmp_path / "s"), "refuse"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout == "created\n"


def test_a_waiting_writer_starts_when_the_first_one_ends(tmp_path: Path) -> None:
    err_path = tmp_path / "err.txt"
    with ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, ["a", "b"], 1):
        with open(err_path, "w") as err:
            waiting = subprocess.Popen(
                [sys.executable, "-c", CREATE, str(tmp_path / "s"), "wait"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + 60
        while "waiting" not in err_path.read_text() and time.monotonic() < deadline:
            assert waiting.poll() is None, err_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # a poll period: it keeps waiting while this process writes
        assert waiting.poll() is None
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out == "created\n"
    note = err_path.read_text()
    assert f"being written by process {os.getpid()}" in note and "waiting for it to finish" in note


def test_waiting_for_writers_sets_the_default_of_create_only_within_its_block() -> None:
    assert wait_requested() is False
    with waiting_for_writers():
        assert wait_requested() is True
    assert wait_requested() is False
