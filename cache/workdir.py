"""The work folder: one experiment's stores, models, detections and reports.

::

    WORK/
      settings.json               what each stage was run with on each split ("<stage>:<split>"),
                                  and its fingerprint
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.atomic import atomic_output, read_json, write_json
from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.core.errors import SppdetError

STAGE_SPLIT_SEPARATOR = ":"  # settings.json keys are <stage>:<split>


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
        all_settings = self.settings()
        fp = fingerprint(settings)
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
            recorded_stage, _, split = key.partition(STAGE_SPLIT_SEPARATOR)
            if recorded_stage == stage:
                splits.append(split)
        return splits

    # --------------------------------------------------------------------------------- models

    def save_model(self, name: str, payload: dict[str, Any]) -> Path:
        """Save a model payload (tensors, numbers, strings, lists, dicts) atomically."""
        path = self.model(name)
        with atomic_output(path) as tmp:
            torch.save(payload, tmp)
        return path

    def load_model(self, name: str, made_by: str) -> dict[str, Any]:
        """Load a model saved by ``save_model``; MADE_BY is the command that makes it."""
        path = self.model(name)
        if not path.is_file():
            raise SppdetError(f"{path}: model not found; run `{made_by}` first")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: name it, suggest the fix
            raise SppdetError(f"{path}: unreadable model ({exc}); rerun `{made_by}`") from None
