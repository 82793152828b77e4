"""One writer per store: the lock file beside a store's folder, held by the writing process.

A store ``<name>/`` has ``.<name>.lock`` beside it. The process that runs a stage takes its writer
byte (``acquire_writer``) and writes its pid, host and start time into the file, so a second
writer is refused naming them, or waits inside ``waiting_for_writers`` (the commands'
``--wait``). Updates of ``store.json`` by the run's parallel tasks take the index byte for a few
milliseconds (``index_locked``). These are POSIX record locks (``fcntl.lockf``), which NFS
supports; they belong to the process and closing any descriptor of the file drops them all, so a
process keeps exactly one descriptor per lock file (``LockFile``), shared by its threads.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from sppdet.cache.atomic import environment_failure
from sppdet.detector.core.errors import SppdetError

LOCK_POLL_SECONDS = 0.5  # how often a waiting writer tries the lock again
_WRITER_BYTE, _INDEX_BYTE = 0, 1  # the lock file's bytes locked by the writer and index updates

log = logging.getLogger(__name__)

_wait_requested: ContextVar[bool] = ContextVar("sppdet_wait_for_writer", default=False)


def wait_requested() -> bool:
    """Whether the caller is inside ``waiting_for_writers``."""
    return _wait_requested.get()


@contextmanager
def waiting_for_writers(wait: bool = True) -> Iterator[None]:
    """Within this block ``create`` waits (WAIT) for another process writing the same store,
    instead of refusing: the commands' ``--wait``."""
    token = _wait_requested.set(wait)
    try:
        yield
    finally:
        _wait_requested.reset(token)


class LockFile:
    """A store's lock file, opened once per process.

    POSIX record locks belong to the process, and closing any descriptor of the file drops them
    all, so a process keeps exactly one descriptor per lock file while it needs it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.users = 0  # open holds: the writer's and index updates in progress
        self.writer_holds = 0  # stores of this process holding the writer lock
        # Record locks do not exclude the threads of one process: these do.
        self.index_guard = threading.Lock()
        self.writer_guard = threading.Lock()


_lock_files: dict[str, LockFile] = {}
_lock_files_guard = threading.Lock()


def _lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


def _open_lock_file(root: Path) -> LockFile:
    path = _lock_path(root)
    key = os.path.realpath(path)
    with _lock_files_guard:
        lock_file = _lock_files.get(key)
        if lock_file is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                lock_file = LockFile(path)
            except OSError as exc:
                failure = environment_failure(exc, root)
                if failure is None:
                    raise
                raise failure from None
            _lock_files[key] = lock_file
        lock_file.users += 1
        return lock_file


def _close_lock_file(lock_file: LockFile) -> None:
    with _lock_files_guard:
        lock_file.users -= 1
        if lock_file.users == 0:
            _lock_files.pop(os.path.realpath(lock_file.path), None)
            os.close(lock_file.fd)


def _holder(lock_file: LockFile) -> str:
    """Who holds the writer lock, as its holder wrote it into the file."""
    try:
        text = os.pread(lock_file.fd, 4096, 0).decode(errors="replace")
        found = json.loads(text)
        return f"process {found['pid']} on {found['host']} (since {found['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _try_lock(fd: int, byte: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def acquire_writer(root: Path, wait: bool) -> LockFile:
    """Take ROOT's writer lock for this process (again, if it holds it already)."""
    lock_file = _open_lock_file(root)
    try:
        with lock_file.writer_guard:
            if lock_file.writer_holds == 0:
                _lock_for_writing(root, lock_file, wait)
            lock_file.writer_holds += 1
    except BaseException:
        _close_lock_file(lock_file)
        raise
    return lock_file


def _lock_for_writing(root: Path, lock_file: LockFile, wait: bool) -> None:
    announced = False
    while not _try_lock(lock_file.fd, _WRITER_BYTE):
        holder = _holder(lock_file)
        if not wait:
            raise SppdetError(
                f"{root}: being written by {holder} ; wait for it to finish, rerun with --wait "
                "to start when it does, or stop that process"
            )
        if not announced:
            log.warning("%s: being written by %s; waiting for it to finish", root, holder)
            announced = True
        time.sleep(LOCK_POLL_SECONDS)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
    try:
        os.ftruncate(lock_file.fd, 0)
        os.pwrite(lock_file.fd, (json.dumps(me) + "\n").encode(), 0)
    except OSError as exc:
        fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, _WRITER_BYTE)
        failure = environment_failure(exc, lock_file.path)
        if failure is None:
            raise
        raise failure from None


def release_writer(lock_file: LockFile) -> None:
    with lock_file.writer_guard:
        lock_file.writer_holds -= 1
        if lock_file.writer_holds == 0:
            try:
                os.ftruncate(lock_file.fd, 0)  # no stale pid for the next writer to report
            except OSError:
                pass
            fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, _WRITER_BYTE)
    _close_lock_file(lock_file)


@contextmanager
def index_locked(root: Path) -> Iterator[None]:
    """Exclusive use of ROOT's store.json among all processes and threads (a few ms)."""
    lock_file = _open_lock_file(root)
    try:
        with lock_file.index_guard:
            fcntl.lockf(lock_file.fd, fcntl.LOCK_EX, 1, _INDEX_BYTE)
            try:
                yield
            finally:
                fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, _INDEX_BYTE)
    finally:
        _close_lock_file(lock_file)
