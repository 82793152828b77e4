"""Atomic file output, and the one-line failures of reading and writing files.

Output goes to a temporary name in the same folder, then is renamed: a crash or Ctrl-C leaves
either the old file or the new one, never a half-written file under the final name. A temporary's
name carries the ``.tmp-`` marker, its writer's process id, a random token and its host
(``x.json.tmp-<pid>-<token>-<host>``), so ``remove_stale_temporaries`` removes only orphans: those
of dead processes on this host, and any older than ``ORPHAN_AGE_SECONDS`` (a writer on another
host of a shared filesystem cannot be asked whether it lives). A live writer's file is never
taken from under it.

Failures the user fixes in the environment (disk full, a read-only or foreign folder) and files
that exist but do not parse become one-line ``SppdetError``s naming the file and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import secrets
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sppdet.detector.core.errors import SppdetError

TMP_MARK = ".tmp-"
_REASON_CHARS = 160  # of a library's error text quoted in a one-line message
# A temporary is written in seconds (shards are built in memory first), so one untouched for an
# hour belongs to a writer that died, on whatever host.
ORPHAN_AGE_SECONDS = 3600.0
_TMP_NAME = re.compile(
    re.escape(TMP_MARK) + r"(?P<pid>\d+)(?:-(?P<token>[0-9a-f]+)-(?P<host>.+))?$"
)

# The fix for each error of the environment; other OSErrors are bugs and keep their traceback.
_ENVIRONMENT_FIXES = {
    errno.ENOSPC: "free space on that filesystem (or pass another --work) and rerun the same "
    "command: finished work is kept",
    errno.EDQUOT: "free space within your quota (or pass another --work) and rerun the same "
    "command: finished work is kept",
    errno.EROFS: "the filesystem is mounted read-only: pass a writable --work",
    errno.EACCES: "no permission to write there: fix the folder's permissions or pass another "
    "--work",
    errno.EPERM: "the file or folder may not be changed (permissions or an immutable flag): "
    "fix that or pass another --work",
}


class DamagedFile(SppdetError, ValueError):
    """A file that exists but does not hold what it should (also a ValueError, as json's is)."""


def environment_failure(exc: OSError, path: str | Path) -> SppdetError | None:
    """The one-line error for EXC when the user fixes it (disk full, read-only, permissions)."""
    fix = _ENVIRONMENT_FIXES.get(exc.errno) if exc.errno is not None else None
    if fix is None:
        return None
    what = (exc.strerror or os.strerror(exc.errno)).lower()
    return SppdetError(f"{path}: {what} ; {fix}")


def _host() -> str:
    """This host's name without dots: a temporary's name must keep PATH's own last suffix, since
    torch.save names the archive inside a model file after the file name up to its last dot."""
    return socket.gethostname().replace(".", "_")


def temporary_path(path: str | Path) -> Path:
    """A name beside PATH private to this write attempt (process, random token, host)."""
    path = Path(path)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}-{_host()}"
    return path.with_name(f"{path.name}{TMP_MARK}{tag}")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces PATH, on any exception it is deleted.

    Disk full, a read-only folder or missing permissions become a one-line SppdetError naming
    PATH (raised from the body too, so a writer that fills the disk gets the same line).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        failure = environment_failure(exc, path)
        if failure is None:
            raise
        raise failure from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only folder, where no temporary could be made either
            pass


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write DATA to PATH atomically and durably (on disk before the rename makes it visible)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, fix: str = "remove it and rerun the stage that writes it") -> Any:
    """Parse the JSON file PATH; a damaged file is a one-line DamagedFile ending in FIX."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode())
    except UnicodeDecodeError:
        raise DamagedFile(f"{path}: damaged, not UTF-8 text ; {fix}") from None
    except json.JSONDecodeError as exc:
        raise DamagedFile(
            f"{path}: damaged, not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}) ; {fix}"
        ) from None
    except OSError as exc:
        failure = environment_failure(exc, path)
        if failure is None:
            raise
        raise failure from None


def unloadable_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words.

    A pickled global outside the allowed types means the file holds code: it is named, and
    torch's advice to load it without ``weights_only`` is not passed on.
    """
    text = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and blocked:
        name = blocked[1].rstrip(".")
        return f"holds code (a pickled global {name}), not a model; nothing in it was run"
    refusal = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if isinstance(exc, pickle.UnpicklingError) and refusal:
        stopped_at = refusal[1].strip()[:_REASON_CHARS]
        return f"not a readable model file (the safe loader stopped at: {stopped_at})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    # torch's first sentence says what failed; advice follows it
    sentence = first.split(". ")[0].rstrip(".")[:_REASON_CHARS]
    return f"not a readable model file ({sentence or type(exc).__name__})"


def read_torch(path: str | Path, fix: str) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` (no code runs); refusals are one
    line naming PATH and ending in FIX."""
    import torch  # only the readers of model files need it

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        failure = environment_failure(exc, path)
        raise (failure or DamagedFile(f"{path}: {unloadable_reason(exc)} ; {fix}")) from None
    except Exception as exc:  # pickle refusals, truncated zip archives, foreign formats
        raise DamagedFile(f"{path}: {unloadable_reason(exc)} ; {fix}") from None


def _is_orphan(path: Path, now: float, host: str) -> bool:
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > ORPHAN_AGE_SECONDS:
        return True
    found = _TMP_NAME.search(path.name)
    if found is None:
        return False
    # A name without a host was written by an earlier sppdet on the host that reads it.
    if (found["host"] or host) != host:
        return False
    return not _process_alive(int(found["pid"]))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the orphaned temporaries in FOLDER (module doc); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, host = time.time(), _host()
    orphans = [p for p in folder.glob(f"*{TMP_MARK}*") if _is_orphan(p, now, host)]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)
