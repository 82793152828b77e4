"""Tests of ``sppdet.cache.shards``.

The sharded store: resume, refusal of other settings, atomicity, the shard records (size and
sha256) and what happens to shards that do not match them, and the one-writer lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest

from sppdet.cache import atomic
from sppdet.cache.atomic import DamagedFile
from sppdet.cache.shards import ShardedStore
from sppdet.detector.core.errors import SppdetError
from tests.cache.test_atomic import dead_pid

IDS = [f"img{i}" for i in range(5)] + ["sub/dir id"]


def _fill(writer, image_ids):  # type: ignore[no-untyped-def]
    for image_id in image_ids:
        writer.put(image_id, "boxes", np.full((3, 4), len(image_id), np.float32), "gzip")
        writer.set_image_attrs(image_id, height=7)


def test_layout_write_and_read_back(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=4)
    assert store.num_shards == 2 and store.pending_shards() == [0, 1]
    assert store.shard_image_ids(1) == ["img4", "sub/dir id"]
    for k in store.pending_shards():
        store.write_shard(k, _fill)
    reader = ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    assert reader.get("sub/dir id", "boxes")[0, 0] == len("sub/dir id")
    assert reader.image_attrs("img0") == {"height": 7}
    assert reader.has("img3", "boxes") and not reader.has("img3", "scores")
    reader.close()


def test_resume_only_builds_missing_shards(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    store.write_shard(1, _fill)
    again = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    assert again.pending_shards() == [0, 2]


def test_other_settings_are_refused_unless_forced(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    store.write_shard(0, _fill)
    with pytest.raises(SppdetError, match=r"other settings \(m: 'ss' \(stored\) vs 'eb'.*--force"):
        ShardedStore.create(tmp_path / "s", "proposals", {"m": "eb"}, IDS, shard_size=2)
    assert (tmp_path / "s" / "shard-00000.h5").exists()  # refusal touched nothing
    forced = ShardedStore.create(tmp_path / "s", "proposals", {"m": "eb"}, IDS, 2, force=True)
    assert forced.pending_shards() == [0, 1, 2]


def test_open_names_the_missing_stage_and_incomplete_store(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match="run `sppdet propose` first"):
        ShardedStore.open(tmp_path / "none", "proposals", made_by="sppdet propose")
    ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    with pytest.raises(SppdetError, match="incomplete .3 of 3 shards"):
        ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    with pytest.raises(SppdetError, match="other settings"):
        ShardedStore.open(
            tmp_path / "s", "proposals", "sppdet propose", {"m": "eb"}, require_complete=False
        )


def test_failed_shard_leaves_no_file_and_stale_temporaries_are_removed(tmp_path: Path) -> None:
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)

    def explode(writer, image_ids):  # type: ignore[no-untyped-def]
        _fill(writer, image_ids)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write_shard(0, explode)
    assert store.pending_shards() == [0, 1, 2]
    assert not list((tmp_path / "s").glob("*.tmp-*"))
    orphan = tmp_path / "s" / f"shard-00001.h5.tmp-{dead_pid()}-0a0b0c0d-{socket.gethostname()}"
    orphan.write_bytes(b"half a file")
    live = tmp_path / "s" / f"shard-00002.h5.tmp-{os.getpid()}-0a0b0c0d-{socket.gethostname()}"
    live.write_bytes(b"being written")
    ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    assert [p.name for p in (tmp_path / "s").glob("*.tmp-*")] == [live.name]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete_store(root: Path, shard_size: int = 2) -> ShardedStore:
    store = ShardedStore.create(root, "proposals", {"m": "ss"}, IDS, shard_size=shard_size)
    for k in store.pending_shards():
        store.write_shard(k, _fill)
    return store


def test_a_shard_is_the_hdf5_file_written_on_disk_byte_for_byte(tmp_path: Path) -> None:
    # The shard is built in memory; the same writes through libhdf5's own file driver on disk
    # give the same bytes, so readers and fingerprints cannot tell the two apart.
    store = _complete_store(tmp_path / "s")
    with h5py.File(tmp_path / "direct.h5", "w", locking=False) as handle:
        handle.attrs["fingerprint"] = store.meta.fingerprint
        handle.attrs["shard"] = 1

        class Direct:  # the ShardWriter calls _fill makes, on the file on disk
            def put(self, image_id, name, array, compression=None):  # type: ignore[no-untyped-def]
                group = handle.require_group(image_id)
                group.create_dataset(
                    name, data=array, compression=compression, chunks=array.shape, shuffle=True
                )

            def set_image_attrs(self, image_id, **attrs):  # type: ignore[no-untyped-def]
                handle.require_group(image_id).attrs.update(attrs)

        _fill(Direct(), store.shard_image_ids(1))
    assert store.shard_path(1).read_bytes() == (tmp_path / "direct.h5").read_bytes()


def test_the_index_records_each_shards_size_and_sha256(tmp_path: Path) -> None:
    store = _complete_store(tmp_path / "s")
    index = json.loads((tmp_path / "s" / "store.json").read_text())
    assert sorted(index["shards"]) == ["0", "1", "2"]
    for k in range(3):
        path = store.shard_path(k)
        assert index["shards"][str(k)] == {"bytes": path.stat().st_size, "sha256": _digest(path)}


def test_a_truncated_shard_is_refused_reported_and_recomputed(tmp_path, caplog) -> None:
    store = _complete_store(tmp_path / "s")
    path = store.shard_path(1)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SppdetError) as caught:
        ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    assert str(caught.value).endswith(
        "proposals store is incomplete (1 of 3 shards missing or damaged) ; rerun `sppdet "
        "propose` to finish it"
    )
    with caplog.at_level(logging.WARNING, "sppdet.cache.shards"):
        again = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    assert again.pending_shards() == [1]
    assert f"{path}: damaged shard ({len(whole) // 2:,} bytes where the index says" in caplog.text
    again.write_shard(1, _fill)
    assert path.read_bytes() == whole


def test_a_corrupted_shard_of_the_right_size_fails_the_sha256(tmp_path, caplog) -> None:
    store = _complete_store(tmp_path / "s")
    path = store.shard_path(2)
    whole = bytearray(path.read_bytes())
    whole[len(whole) // 2] ^= 0xFF  # one flipped byte: the size still matches
    path.write_bytes(bytes(whole))
    reader = ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    assert reader.get("img0", "boxes").shape == (3, 4)  # the sound shards read as before
    with pytest.raises(SppdetError) as caught:
        reader.get("img4", "boxes")
    assert str(caught.value) == (
        f"{path}: damaged shard: its bytes differ from the index's sha256 (corrupted) ; rerun "
        "`sppdet propose` to recompute it"
    )
    reader.close()
    with caplog.at_level(logging.WARNING, "sppdet.cache.shards"):
        again = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    assert again.pending_shards() == [2] and "sha256 (corrupted)" in caplog.text
    assert not path.exists()  # never trusted again


def test_a_shard_without_its_record_is_not_trusted(tmp_path: Path) -> None:
    # A writer killed between the rename and the record: the file is whole, but unproven.
    store = _complete_store(tmp_path / "s")
    index_path = tmp_path / "s" / "store.json"
    index = json.loads(index_path.read_text())
    del index["shards"]["0"]
    index_path.write_text(json.dumps(index))
    assert store.pending_shards() == [0]
    with pytest.raises(SppdetError, match=r"shard-00000.h5: shard missing or unfinished ; rerun"):
        ShardedStore.open(tmp_path / "s", "proposals", "p", require_complete=False).get("img0", "b")


def test_a_store_from_before_the_index_keeps_its_finished_shards(tmp_path: Path) -> None:
    # sppdet before the sha256 index wrote no "shards" key; its shard files appeared only by an
    # atomic rename once complete. Opening such a store records them instead of redoing them.
    store = _complete_store(tmp_path / "s")
    index_path = tmp_path / "s" / "store.json"
    expected = json.loads(index_path.read_text())["shards"]
    legacy = json.loads(index_path.read_text())
    del legacy["shards"]
    index_path.write_text(json.dumps(legacy))
    store.shard_path(2).unlink()  # an interrupted old run: the last shard never renamed
    del expected["2"]
    reopened = ShardedStore.open(tmp_path / "s", "proposals", "p", require_complete=False)
    assert reopened.pending_shards() == [2]
    assert json.loads(index_path.read_text())["shards"] == expected
    np.testing.assert_array_equal(reopened.get("img0", "boxes"), np.full((3, 4), 4, np.float32))


def test_a_damaged_index_is_one_line_and_rebuilt_only_when_forced(tmp_path: Path) -> None:
    _complete_store(tmp_path / "s")
    index_path = tmp_path / "s" / "store.json"
    index_path.write_text('{"kind": "proposals", "params": ')
    with pytest.raises(DamagedFile) as caught:
        ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    assert str(caught.value).startswith(f"{index_path}: damaged, not JSON (")
    assert str(caught.value).endswith(" ; rebuild the store with `sppdet propose --force`")
    with pytest.raises(DamagedFile, match="rerun with --force to rebuild the store"):
        ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    index_path.write_text('{"kind": "proposals"}')
    with pytest.raises(DamagedFile, match=r"damaged store index \(bad or missing 'params'\)"):
        ShardedStore.open(tmp_path / "s", "proposals", made_by="sppdet propose")
    forced = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, 2, force=True)
    assert forced.pending_shards() == [0, 1, 2]


def test_a_full_disk_keeps_the_finished_shards_and_leaves_no_temporary(tmp_path, monkeypatch):
    store = ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    store.write_shard(0, _fill)
    before = store.shard_path(0).read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(SppdetError) as caught:
        store.write_shard(1, _fill)
    assert str(caught.value).startswith(f"{store.shard_path(1)}: no space left on device ; ")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["shard-00000.h5", "store.json"]
    assert store.shard_path(0).read_bytes() == before and store.pending_shards() == [1, 2]


def test_the_duplicate_id_is_named(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match=r"image id 'img1' is listed twice ; list each image"):
        ShardedStore.create(tmp_path / "s", "proposals", {}, ["img0", "img1", "img1"], 2)
