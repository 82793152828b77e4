"""Tests of ``sppdet.cache.shards``.

The sharded store and work folder: resume, refusal of other settings, atomicity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.shards import ShardedStore
from sppdet.detector.core.errors import SppdetError

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
    (tmp_path / "s" / "shard-00001.h5.tmp-999").write_bytes(b"half a file")
    ShardedStore.create(tmp_path / "s", "proposals", {"m": "ss"}, IDS, shard_size=2)
    assert not list((tmp_path / "s").glob("*.tmp-*"))
