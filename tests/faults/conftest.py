"""Fixtures of the fault-injection tests: small datasets, a full disk, a read-only folder.

The environment faults need root where the tests run (as in CI): a full disk is a 2 MB tmpfs the
test mounts, and a folder read-only even for root is a read-only bind mount (or, where mounting
is refused, the immutable flag). Elsewhere they are skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.scenes import make_voc, scenes

SMALL_DISK = "2m"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """Eight 160x120 scenes, split 'trainval' (two shards of four)."""
    return make_voc(tmp_path / "voc", scenes(8), "trainval")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 2 MB tmpfs, unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("a full filesystem is a small tmpfs, and mounting one needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(disk))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        _run("umount", "-l", str(disk))


def fill_disk(disk: Path, leave: int) -> Path:
    """Fill DISK's filesystem but for about LEAVE bytes; returns the filler file."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


@pytest.fixture
def make_read_only() -> Iterator[Callable[[Path], None]]:
    """A function that makes a folder read-only, for root too; undone at teardown."""
    undo: list[Callable[[], object]] = []

    def freeze(folder: Path) -> None:
        if os.geteuid() != 0:
            modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
            for p, mode in modes.items():
                p.chmod(mode & ~0o222)
            undo.append(lambda: [p.chmod(mode) for p, mode in modes.items()])
            return
        if _run("mount", "--bind", str(folder), str(folder)).returncode == 0:
            undo.append(lambda: _run("umount", "-l", str(folder)))
            if _run("mount", "-o", "remount,bind,ro", str(folder)).returncode == 0:
                return
        if _run("chattr", "-R", "+i", str(folder)).returncode == 0:
            undo.append(lambda: _run("chattr", "-R", "-i", str(folder)))
            return
        pytest.skip("root ignores permissions, and neither a read-only bind mount nor chattr +i "
                    "is allowed here")  # fmt: skip

    yield freeze
    for step in reversed(undo):
        step()
