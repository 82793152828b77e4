"""The work folder: one experiment's stores, models, detections and reports.

::

    WORK/
      settings.json               what each stage was run with on each split ("<stage>:<split>"),
                                  and its fingerprint; and the preset ("preset") the first
                                  stage ran with, whose settings later stages default to
      proposals/<split>/          sharded store (see shards.py)
      features/<split>/           sharded store of conv5 maps
      rcnn-features/<split>/      sharded store of R-CNN pool5 features (for comparison)
      models/<name>.pt            finetune.pt, svm.pt, bbox.pt (svm-rcnn.pt, bbox-rcnn.pt), each
                                  with its inputs' fingerprint
      detections/<split>/         comp4_det_<split>_<class>.txt, coco_results.json, drawings
      reports/                    recall.json, eval.json, bench.json

Stages find their inputs and outputs only through this class.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.atomic import (
    atomic_output,
    environment_failure,
    read_json,
    read_torch,
    write_json,
)
from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.core.errors import SppdetError

STAGE_SPLIT_SEPARATOR = ":"  # settings.json keys are <stage>:<split>
SETTINGS_LOCK = ".settings.lock"  # beside settings.json: serialises its updates
FULL_DISK_BYTES = 1 << 20  # a failed model write with less free space than this: disk full
PRESET_KEY = "preset"  # settings.json key of the work folder's preset (no separator: no stage)


def _write_failure(exc: RuntimeError, path: Path) -> Exception:
    """The one-line error for a model write torch could not finish: a full disk when the folder
    has less than FULL_DISK_BYTES free, else the failure as torch worded it."""
    if shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
        return environment_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path) or exc
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SppdetError(f"{path}: could not be written ({first_line}) ; check the disk and rerun")


def stage_key(stage: str, split: str) -> str:
    """The settings.json key of STAGE run on SPLIT: the one place that formats it."""
    return f"{stage}{STAGE_SPLIT_SEPARATOR}{split}"


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> WorkDir:
        return cls(Path(root))

    def proposals(self, split: str) -> Path:
        return self.root / "proposals" / split

    def features(self, split: str) -> Path:
        return self.root / "features" / split

    def rcnn_features(self, split: str) -> Path:
        return self.root / "rcnn-features" / split

    def model(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    def detections(self, split: str) -> Path:
        return self.root / "detections" / split

    def report(self, name: str) -> Path:
        return self.root / "reports" / name

    # ------------------------------------------------------------------------- settings.json

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    def settings(self) -> dict[str, Any]:
        return read_json(self.settings_path) if self.settings_path.is_file() else {}

    def record(self, stage: str, split: str, settings: dict[str, Any]) -> str:
        """Record what STAGE ran with on SPLIT (atomically); returns the settings' fingerprint."""
        fp = fingerprint(settings)
        with self._settings_locked():
            all_settings = self.settings()
            all_settings[stage_key(stage, split)] = {"settings": settings, "fingerprint": fp}
            write_json(self.settings_path, all_settings)
        return fp

    def recorded(self, stage: str, split: str) -> dict[str, Any] | None:
        """The settings STAGE recorded for SPLIT, or None when it has not run on SPLIT."""
        entry = self.settings().get(stage_key(stage, split))
        return None if entry is None else entry["settings"]

    def recorded_splits(self, stage: str) -> list[str]:
        """The splits STAGE has recorded settings for, in settings.json's order."""
        splits = []
        for key in self.settings():
            recorded_stage, separator, split = key.partition(STAGE_SPLIT_SEPARATOR)
            if separator and recorded_stage == stage:
                splits.append(split)
        return splits

    def record_preset(self, settings: dict[str, Any]) -> bool:
        """Record the preset SETTINGS (every section, its name under "preset") the work folder
        runs with, unless one is recorded already; returns whether this call recorded it."""
        if PRESET_KEY in self.settings():  # recorded already: nothing to write (or lock)
            return False
        with self._settings_locked():
            all_settings = self.settings()
            if PRESET_KEY in all_settings:
                return False
            entry = {"settings": settings, "fingerprint": fingerprint(settings)}
            all_settings[PRESET_KEY] = entry
            write_json(self.settings_path, all_settings)
        return True

    @contextmanager
    def _settings_locked(self) -> Iterator[None]:
        """settings.json to this process alone while it is read, changed and rewritten, so that
        stages running at once in one work folder do not drop each other's entries."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / SETTINGS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only or foreign work folder: one line naming the file
            failure = environment_failure(exc, self.settings_path)
            if failure is None:
                raise
            raise failure from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def recorded_preset(self) -> dict[str, Any] | None:
        """The preset settings ``record_preset`` recorded, or None."""
        entry = self.settings().get(PRESET_KEY)
        return None if entry is None else entry["settings"]

    # --------------------------------------------------------------------------------- models

    def save_model(self, name: str, payload: dict[str, Any]) -> Path:
        """Save a model payload (tensors, numbers, strings, lists, dicts) atomically."""
        path = self.model(name)
        with atomic_output(path) as tmp:
            try:
                # By file name, not a file object: torch names the archive inside after it.
                torch.save(payload, tmp)
            except RuntimeError as exc:  # torch reports a failed write without its errno
                raise _write_failure(exc, path) from None
        return path

    def load_model(self, name: str, made_by: str) -> dict[str, Any]:
        """Load a model saved by ``save_model``; MADE_BY is the command that makes it."""
        path = self.model(name)
        if not path.is_file():
            raise SppdetError(f"{path}: model not found ; run `{made_by}` first")
        return read_torch(path, f"rerun `{made_by}`")
