"""Sharded HDF5 stores: the on-disk form of every per-image stage output.

A store is a folder, with a lock file beside it::

    .<name>.lock          held by the process writing the store (its pid, host and start time)
    <name>/
      store.json          kind, settings, their fingerprint, the ordered image ids, shard size,
                          and the size and sha256 of every finished shard
      shard-00000.h5      images [0, shard_size) of the list, one HDF5 group per image
      shard-00001.h5      ...

Shard k always holds the same images, so the index is arithmetic on the id list in store.json.

- One writer per store: ``create`` takes the store's lock for the process that runs the stage
  (until ``release``, the end of a ``with`` block, or the store object's end); a second process
  is refused, naming the first one's pid and host, or waits (``waiting_for_writers``, the
  commands' ``--wait``). The tasks of that run (worker processes, Ray tasks on other nodes) open
  the store with ``open`` and write their shards in parallel.
- Each shard's HDF5 file is built in memory and written with plain file I/O to a temporary name
  private to its attempt (pid, token, host), synced, and renamed: libhdf5 never meets a full
  disk (which crashed it), a killed writer leaves no file that a reader takes as valid, and a
  retried task that writes a shard twice replaces it with identical content, never duplicates.
- After the rename the shard's size and sha256 go into store.json (under a short lock on the
  index, as parallel tasks update it). A shard without its record, or whose file does not match
  it, is not trusted: readers refuse it and a rerun of the stage recomputes it (``create``
  reports it). So re-running a stage computes only the missing or damaged shards (resume).
- ``create`` removes only orphaned temporaries (see cache.atomic): never a live writer's.

Files are read without HDF5's file locks: a shard is written once under a private name and never
modified after its rename, and network filesystems (NFS, Lustre) often refuse HDF5's locks. The
store's own locks are POSIX record locks (``fcntl.lockf``), which NFS supports.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import numpy as np

from sppdet.cache.atomic import (
    DamagedFile,
    environment_failure,
    read_json,
    remove_stale_temporaries,
    temporary_path,
    write_bytes,
    write_json,
)
from sppdet.cache.fingerprint import differences, fingerprint
from sppdet.cache.locks import acquire_writer, index_locked, release_writer, wait_requested
from sppdet.detector.core.errors import SppdetError

META_NAME = "store.json"
FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def _group_name(image_id: str) -> str:
    return quote(image_id, safe="")  # image ids may hold '/', which HDF5 reads as a path


# ------------------------------------------------------------------------------ the index


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


@dataclass(frozen=True)
class ShardRecord:
    """What a finished shard's file holds: its size and SHA-256."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.size, "sha256": self.sha256}


def _read_index(path: Path, fix: str) -> tuple[StoreMeta, dict[int, ShardRecord]]:
    obj = read_json(path, fix)
    if "shards" not in obj and "image_ids" in obj:
        obj = _adopt_unindexed_shards(path, fix)
    try:
        meta = StoreMeta.from_json(obj)
        records = {
            int(k): ShardRecord(int(v["bytes"]), str(v["sha256"]))
            for k, v in obj.get("shards", {}).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedFile(f"{path}: damaged store index (bad or missing {exc}) ; {fix}") from None
    return meta, records


def shard_file(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.h5"


def _adopt_unindexed_shards(path: Path, fix: str) -> dict[str, Any]:
    """The index of a store written before shards were recorded in it (sppdet 0.1 before the
    sha256 index): there a shard file only appeared by an atomic rename once complete, so every
    shard file present is finished. Their size and sha256 are recorded once, under the index
    lock, so an upgrade keeps the work already done instead of redoing it."""
    with index_locked(path.parent):
        obj = read_json(path, fix)
        if "shards" not in obj:
            shards = -(-len(obj["image_ids"]) // int(obj["shard_size"]))
            files = {k: shard_file(path.parent, k) for k in range(shards)}
            obj["shards"] = {
                str(k): ShardRecord(f.stat().st_size, _file_sha256(f)).to_json()
                for k, f in files.items()
                if f.is_file()
            }
            write_json(path, obj)
            log.info("%s: recorded %d finished shards in the index", path, len(obj["shards"]))
    return obj


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class StoreCheck:
    """What ``ShardedStore.check`` found in a store."""

    root: Path
    kind: str
    shards: int
    unfinished: list[int] = field(default_factory=list)  # never finished (no record)
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (shard, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.unfinished and not self.damaged


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

    def __init__(
        self,
        root: Path,
        meta: StoreMeta,
        max_open_files: int = 8,
        made_by: str | None = None,
    ) -> None:
        self.root = root
        self.meta = meta
        self._position = {image_id: i for i, image_id in enumerate(meta.image_ids)}
        self._open: OrderedDict[int, h5py.File] = OrderedDict()
        self._max_open = max_open_files
        self._rerun = f"rerun `{made_by}`" if made_by else f"rerun the stage that builds {root}"
        self._records: dict[int, ShardRecord] = {}
        self._verified: set[int] = set()  # shards whose file matched its record
        self._writer: weakref.finalize | None = None

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
        wait: bool | None = None,
    ) -> ShardedStore:
        """Open ROOT for writing with these settings, resuming a store made with the same ones.

        Takes the store's writer lock for this process: another process writing it is refused,
        or waited for when WAIT (default: ``waiting_for_writers``). A store made with other
        settings (or other images) is refused unless FORCE, which deletes it first. Orphaned
        temporaries are removed; finished shards that do not match their record are reported,
        deleted and so computed again.
        """
        root = Path(root)
        seen: set[str] = set()
        for image_id in image_ids:
            if image_id in seen:
                raise SppdetError(
                    f"{root}: image id {image_id!r} is listed twice ; list each image once"
                )
            seen.add(image_id)
        meta = StoreMeta(kind, params, list(image_ids), max(1, int(shard_size)))
        lock_file = acquire_writer(root, wait_requested() if wait is None else wait)
        try:
            store = cls._create_locked(root, meta, force)
        except BaseException:
            release_writer(lock_file)
            raise
        store._writer = weakref.finalize(store, release_writer, lock_file)
        return store

    @classmethod
    def _create_locked(cls, root: Path, meta: StoreMeta, force: bool) -> ShardedStore:
        meta_path = root / META_NAME
        if meta_path.exists():
            try:
                found, _ = _read_index(meta_path, "rerun with --force to rebuild the store")
            except DamagedFile:
                if not force:
                    raise
                found = None
            same = found is not None and (
                found.kind, found.fingerprint, found.image_ids, found.shard_size
            ) == (meta.kind, meta.fingerprint, meta.image_ids, meta.shard_size)  # fmt: skip
            if found is not None and not same and not force:
                what = differences(meta.params, found.params) or ["the image list or shard size"]
                raise SppdetError(
                    f"{root}: existing {found.kind} store was made with other settings "
                    f"({'; '.join(what)}) ; rerun with --force to overwrite it, or use another "
                    "--work"
                )
            if not same:
                shutil.rmtree(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(root)
        except OSError as exc:
            failure = environment_failure(exc, root)
            if failure is None:
                raise
            raise failure from None
        if not meta_path.exists():
            write_json(meta_path, {**meta.to_json(), "shards": {}})
        store = cls(root, meta)
        store._drop_damaged_shards()
        return store

    def release(self) -> None:
        """Give up the writer lock taken by ``create`` (also done when the store is dropped)."""
        if self._writer is not None:
            self._writer()

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
            raise SppdetError(f"{root}: no {kind} store here ; run `{made_by}` first")
        meta, _ = _read_index(meta_path, f"rebuild the store with `{made_by} --force`")
        if meta.kind != kind:
            raise SppdetError(
                f"{root}: holds a {meta.kind} store, not {kind} ; point --work at the right folder"
            )
        if expect_params is not None:
            diff = differences(expect_params, meta.params)
            if diff:
                raise SppdetError(
                    f"{root}: {kind} store was made with other settings ({'; '.join(diff)}) ; "
                    f"rebuild it with `{made_by} --force` or ask for the stored settings"
                )
        store = cls(root, meta, made_by=made_by)
        missing = store.pending_shards()
        if require_complete and missing:
            raise SppdetError(
                f"{root}: {kind} store is incomplete ({len(missing)} of {store.num_shards} shards "
                f"missing or damaged) ; rerun `{made_by}` to finish it"
            )
        return store

    @classmethod
    def check(cls, root: str | Path) -> StoreCheck:
        """Compare every shard of the store at ROOT with its record (size and sha256)."""
        root = Path(root)
        meta, records = _read_index(root / META_NAME, "rerun the stage with --force")
        store = cls(root, meta)
        report = StoreCheck(root, meta.kind, store.num_shards)
        for k in range(store.num_shards):
            if k not in records:
                report.unfinished.append(k)
                continue
            problem = store._shard_problem(k, records[k], full=True)
            if problem is not None:
                report.damaged.append((k, problem))
        return report

    # ------------------------------------------------------------------------------- layout

    @property
    def num_shards(self) -> int:
        return -(-len(self.meta.image_ids) // self.meta.shard_size)

    def shard_image_ids(self, shard: int) -> list[str]:
        size = self.meta.shard_size
        return self.meta.image_ids[shard * size : (shard + 1) * size]

    def shard_path(self, shard: int) -> Path:
        return shard_file(self.root, shard)

    def pending_shards(self) -> list[int]:
        """The shards not finished: no record in the index, or no file of the recorded size."""
        self._records = self._read_records()
        return [
            k for k in range(self.num_shards)
            if k not in self._records or self._shard_problem(k, self._records[k]) is not None
        ]  # fmt: skip

    def shard_of(self, image_id: str) -> int:
        try:
            return self._position[image_id] // self.meta.shard_size
        except KeyError:
            raise SppdetError(
                f"{self.root}: image {image_id!r} is not in this store ; {self._rerun} for this "
                "image list"
            ) from None

    # ------------------------------------------------------------------------------ integrity

    def _read_records(self) -> dict[int, ShardRecord]:
        _, records = _read_index(self.root / META_NAME, f"{self._rerun} with --force")
        return records

    def _shard_problem(self, shard: int, record: ShardRecord, full: bool = False) -> str | None:
        """What is wrong with SHARD's file against RECORD (the size; with FULL also the sha256)."""
        path = self.shard_path(shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "the file is missing"
        if size != record.size:
            return f"{size:,} bytes where the index says {record.size:,} (truncated or overwritten)"
        if full and _file_sha256(path) != record.sha256:
            return "its bytes differ from the index's sha256 (corrupted)"
        return None

    def _drop_damaged_shards(self) -> None:
        """Check every finished shard in full; report, delete and unrecord those that fail."""
        self._records = self._read_records()
        damaged = []
        for k, record in sorted(self._records.items()):
            problem = self._shard_problem(k, record, full=True)
            if problem is None:
                self._verified.add(k)
                continue
            log.warning("%s: damaged shard (%s); computing it again", self.shard_path(k), problem)
            self.shard_path(k).unlink(missing_ok=True)
            damaged.append(k)
        if damaged:
            self._update_index(lambda shards: [shards.pop(str(k), None) for k in damaged])
            self._records = self._read_records()

    def _update_index(self, change: Callable[[dict[str, Any]], object]) -> None:
        """Apply CHANGE to the index's shard records, as one locked read-modify-write."""
        meta_path = self.root / META_NAME
        with index_locked(self.root):
            if not meta_path.is_file():
                raise SppdetError(
                    f"{meta_path}: the store index vanished while the store was being written ; "
                    f"{self._rerun}"
                )
            obj = read_json(meta_path, f"{self._rerun} with --force")
            change(obj.setdefault("shards", {}))
            write_json(meta_path, obj)

    # ------------------------------------------------------------------------------ writing

    def write_shard(self, shard: int, fill: Callable[[ShardWriter, list[str]], None]) -> Path:
        """Build shard SHARD: FILL(writer, image_ids) writes it; the file appears atomically.

        The HDF5 file is built in memory, then written, synced and renamed into place, and its
        size and sha256 recorded in the index. An existing shard is replaced (a retried or
        repeated task); a concurrent attempt at the same shard writes its own temporary, and the
        last rename wins with the same content. A full disk is a one-line SppdetError.
        """
        path = self.shard_path(shard)
        # HDF5's in-memory driver lays the file out as it would on disk, byte for byte; the name
        # only has to be unique among the files this process has open.
        with h5py.File(temporary_path(path), "w", driver="core", backing_store=False) as handle:
            handle.attrs["fingerprint"] = self.meta.fingerprint
            handle.attrs["shard"] = shard
            fill(ShardWriter(handle), self.shard_image_ids(shard))
            handle.flush()
            image = handle.id.get_file_image()
        stale = self._open.pop(shard, None)
        if stale is not None:
            stale.close()
        write_bytes(path, image)
        record = ShardRecord(len(image), hashlib.sha256(image).hexdigest())
        self._update_index(lambda shards: shards.__setitem__(str(shard), record.to_json()))
        self._records[shard] = record
        self._verified.add(shard)
        return path

    # ------------------------------------------------------------------------------ reading

    def _verify(self, shard: int) -> None:
        path = self.shard_path(shard)
        record = self._records.get(shard) or self._read_records().get(shard)
        if record is None:
            raise SppdetError(f"{path}: shard missing or unfinished ; {self._rerun} to finish it")
        problem = self._shard_problem(shard, record, full=True)
        if problem is not None:
            raise SppdetError(f"{path}: damaged shard: {problem} ; {self._rerun} to recompute it")
        self._records[shard] = record
        self._verified.add(shard)

    def _file(self, shard: int) -> h5py.File:
        handle = self._open.pop(shard, None)
        if handle is None:
            if shard not in self._verified:
                self._verify(shard)
            path = self.shard_path(shard)
            try:
                handle = h5py.File(path, "r", locking=False)
            except OSError as exc:
                raise SppdetError(
                    f"{path}: unreadable shard ({exc}) ; {self._rerun} to recompute it"
                ) from None
            if len(self._open) >= self._max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
        self._open[shard] = handle
        return handle

    def group(self, image_id: str) -> h5py.Group:
        handle = self._file(self.shard_of(image_id))
        name = _group_name(image_id)
        if name not in handle:
            raise SppdetError(
                f"{handle.filename}: image {image_id!r} missing from its shard ; {self._rerun} "
                "with --force"
            )
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
        """Close the open shard files (the writer lock, if any, stays: see ``release``)."""
        while self._open:
            _, handle = self._open.popitem()
            handle.close()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.release()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("shard-*.h5"))
