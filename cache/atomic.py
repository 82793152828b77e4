"""Atomic file output: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C leaves either the old file or the new one, never a half-written file under the
final name. Temporary names carry the ``.tmp-`` marker so ``remove_stale_temporaries`` finds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces PATH, on any exception it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by killed writers in FOLDER; returns how many."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f"*{TMP_MARK}*")] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
