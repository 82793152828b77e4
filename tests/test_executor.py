"""Executor choice without a cluster: option checks, a missing Ray, and shard writes that stay
exact when two attempts write the same shard (a retried task whose first attempt still ran)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.errors import SppdetError
from sppdet.detector.parallel import Executor

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
    task retried elsewhere while the first attempt lives on): each writes its own temporary,
    both renames succeed, and the store holds the shard once, complete."""
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
    assert len(temporaries[0]) == 2 and len(set(temporaries[0])) == 2  # two private names
    assert all(name.startswith("shard-00001.h5.tmp-") for name in temporaries[0])
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
