"""Sharded HDF5 stores: the on-disk form of every per-image stage output.

A store is a folder::

    store.json            kind, settings, their fingerprint, the ordered image ids, shard size
    shard-00000.h5        images [0, shard_size) of the list, one HDF5 group per image
    shard-00001.h5        ...

Shard k always holds the same images, so the index is arithmetic on the id list in store.json.
Each shard is written by one writer to a temporary name and renamed when complete, so:

- a killed writer leaves no file that a reader takes as valid (only a ``.tmp-`` file, removed on
  the next open for writing);
- re-running a stage computes only the shards that are missing (resume);
- parallel writers (processes, Ray tasks) never share a file: HDF5 needs no concurrent writes;
- a retried task that writes a shard twice replaces it with identical content, never duplicates:
  every attempt writes its own temporary (host, process and a random token in the name, so two
  attempts on two nodes of a shared filesystem never meet) and the final rename is atomic.

Files are opened without HDF5's file locks: a shard is written once under a private name and
never modified after its rename, and network filesystems (NFS, Lustre) often refuse the locks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import numpy as np

from sppdet.cache.atomic import TMP_MARK, read_json, remove_stale_temporaries, write_json
from sppdet.cache.fingerprint import differences, fingerprint
from sppdet.detector.core.errors import SppdetError

META_NAME = "store.json"
FORMAT_VERSION = 1


def _attempt_tag() -> str:
    """Unique per write attempt, also across the nodes of a cluster sharing the folder."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _group_name(image_id: str) -> str:
    return quote(image_id, safe="")  # image ids may hold '/', which HDF5 reads as a path


@dataclass(frozen=True)
class StoreMeta:
    kind: str
    params: dict[str, Any]
    image_ids: list[str]
    shard_size: int

    @property
    def fingerprint(self) -> str:
        return fingerprint({"kind": self.kind, "params": self.params})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "fingerprint": self.fingerprint,
            "shard_size": self.shard_size,
            "image_ids": self.image_ids,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StoreMeta:
        return cls(obj["kind"], obj["params"], list(obj["image_ids"]), int(obj["shard_size"]))


class ShardWriter:
    """Write access to one image's group inside a shard being built."""

    def __init__(self, handle: h5py.File) -> None:
        self._handle = handle

    def put(
        self,
        image_id: str,
        name: str,
        array: np.ndarray,
        compression: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        group = self._handle.require_group(_group_name(image_id))
        data = np.ascontiguousarray(array)
        kwargs: dict[str, Any] = {}
        if compression and data.size:
            kwargs = {"compression": compression, "chunks": data.shape, "shuffle": True}
        dset = group.create_dataset(name, data=data, **kwargs)
        for key, value in (attrs or {}).items():
            dset.attrs[key] = value

    def set_image_attrs(self, image_id: str, **attrs: Any) -> None:
        group = self._handle.require_group(_group_name(image_id))
        for key, value in attrs.items():
            group.attrs[key] = value


class ShardedStore:
    """One stage's per-image output for one split. Use ``create`` to write, ``open`` to read."""

    def __init__(self, root: Path, meta: StoreMeta, max_open_files: int = 8) -> None:
        self.root = root
        self.meta = meta
        self._position = {image_id: i for i, image_id in enumerate(meta.image_ids)}
        self._open: OrderedDict[int, h5py.File] = OrderedDict()
        self._max_open = max_open_files

    # ------------------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        root: str | Path,
        kind: str,
        params: dict[str, Any],
        image_ids: list[str],
        shard_size: int,
        force: bool = False,
    ) -> ShardedStore:
        """Open ROOT for writing with these settings, resuming a store made with the same ones.

        A store made with other settings (or other images) is refused unless FORCE, which deletes
        it first. Temporaries left by killed writers are removed.
        """
        root = Path(root)
        if len(set(image_ids)) != len(image_ids):
            raise SppdetError(f"{root}: the image list has duplicate ids")
        meta = StoreMeta(kind, params, list(image_ids), max(1, int(shard_size)))
        meta_path = root / META_NAME
        if meta_path.exists():
            found = StoreMeta.from_json(read_json(meta_path))
            same = (found.kind, found.fingerprint, found.image_ids, found.shard_size) == (
                meta.kind, meta.fingerprint, meta.image_ids, meta.shard_size
            )  # fmt: skip
            if not same and not force:
                what = differences(meta.params, found.params) or ["the image list or shard size"]
                raise SppdetError(
                    f"{root}: existing {found.kind} store was made with other settings "
                    f"({'; '.join(what)}); rerun with --force to overwrite it, or use another "
                    "--work"
                )
            if not same:
                shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        if not meta_path.exists():
            write_json(meta_path, meta.to_json())
        return cls(root, meta)

    @classmethod
    def open(
        cls,
        root: str | Path,
        kind: str,
        made_by: str,
        expect_params: dict[str, Any] | None = None,
        require_complete: bool = True,
    ) -> ShardedStore:
        """Open ROOT for reading. MADE_BY is the command that builds it, quoted in errors."""
        root = Path(root)
        meta_path = root / META_NAME
        if not meta_path.is_file():
            raise SppdetError(f"{root}: no {kind} store here; run `{made_by}` first")
        meta = StoreMeta.from_json(read_json(meta_path))
        if meta.kind != kind:
            raise SppdetError(f"{root}: holds a {meta.kind} store, not {kind}")
        if expect_params is not None:
            diff = differences(expect_params, meta.params)
            if diff:
                raise SppdetError(
                    f"{root}: {kind} store was made with other settings ({'; '.join(diff)}); "
                    f"rebuild it with `{made_by} --force` or ask for the stored settings"
                )
        store = cls(root, meta)
        missing = store.pending_shards()
        if require_complete and missing:
            raise SppdetError(
                f"{root}: {kind} store is incomplete ({len(missing)} of {store.num_shards} shards "
                f"missing); rerun `{made_by}` to finish it"
            )
        return store

    # ------------------------------------------------------------------------------- layout

    @property
    def num_shards(self) -> int:
        return -(-len(self.meta.image_ids) // self.meta.shard_size)

    def shard_image_ids(self, shard: int) -> list[str]:
        size = self.meta.shard_size
        return self.meta.image_ids[shard * size : (shard + 1) * size]

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}.h5"

    def pending_shards(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.shard_path(k).exists()]

    def shard_of(self, image_id: str) -> int:
        try:
            return self._position[image_id] // self.meta.shard_size
        except KeyError:
            raise SppdetError(f"{self.root}: image {image_id!r} is not in this store") from None

    # ------------------------------------------------------------------------------ writing

    def write_shard(self, shard: int, fill: Callable[[ShardWriter, list[str]], None]) -> Path:
        """Build shard SHARD: FILL(writer, image_ids) writes it; the file appears atomically.

        An existing shard is replaced (a retried or repeated task); a concurrent attempt at the
        same shard writes its own temporary, and the last rename wins with the same content.
        """
        path = self.shard_path(shard)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{_attempt_tag()}")
        try:
            with h5py.File(tmp, "w", locking=False) as handle:
                handle.attrs["fingerprint"] = self.meta.fingerprint
                handle.attrs["shard"] = shard
                fill(ShardWriter(handle), self.shard_image_ids(shard))
            with open(tmp, "rb+") as raw:  # on disk before the rename makes it visible
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------------------------ reading

    def _file(self, shard: int) -> h5py.File:
        handle = self._open.pop(shard, None)
        if handle is None:
            path = self.shard_path(shard)
            if not path.exists():
                raise SppdetError(f"{path}: shard missing; rerun the stage that builds {self.root}")
            handle = h5py.File(path, "r", locking=False)
            if len(self._open) >= self._max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
        self._open[shard] = handle
        return handle

    def group(self, image_id: str) -> h5py.Group:
        handle = self._file(self.shard_of(image_id))
        name = _group_name(image_id)
        if name not in handle:
            raise SppdetError(f"{handle.filename}: image {image_id!r} missing from its shard")
        return handle[name]

    def has(self, image_id: str, name: str) -> bool:
        return image_id in self._position and name in self.group(image_id)

    def get(self, image_id: str, name: str) -> np.ndarray:
        return self.group(image_id)[name][()]

    def image_attrs(self, image_id: str) -> dict[str, Any]:
        return dict(self.group(image_id).attrs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta.image_ids)

    def __len__(self) -> int:
        return len(self.meta.image_ids)

    def close(self) -> None:
        while self._open:
            _, handle = self._open.popitem()
            handle.close()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("shard-*.h5"))
