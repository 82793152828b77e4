"""Combine: split out of the former ``detect`` module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    DetectConfig,
    as_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.stage import CANDIDATES_KIND, finish


def run_combine(
    works: list[WorkDir], dataset: Dataset, cfg: DetectConfig, out: Path
) -> dict[str, Any]:
    """Model combination: NMS over the union of several work folders' candidates (§4.4)."""
    if len(works) < 2:
        raise SppdetError("combine needs at least two --work folders")
    stores = []
    for work in works:
        root = work.detections(dataset.split) / "candidates"
        store = ShardedStore.open(root, CANDIDATES_KIND, f"sppdet detect --work {work.root}")
        missing = set(r.image_id for r in dataset.records) - set(store.meta.image_ids)
        if missing:
            raise SppdetError(
                f"{root}: detections lack {len(missing)} images of split {dataset.split!r}; "
                f"rerun `sppdet detect --work {work.root}` on the same data"
            )
        stores.append(store)
    classes = [tuple(w.load_model("svm", "sppdet train-svm")["classes"]) for w in works]
    if any(c != tuple(dataset.classes) for c in classes):
        raise SppdetError(
            f"the models were trained for different classes ({classes}); combine needs the same"
        )
    fp = fingerprint({"combine": [s.meta.fingerprint for s in stores], "detect": as_dict(cfg)})
    detections = finish(stores, dataset, cfg, out)
    for store in stores:
        store.close()
    return {
        "out": str(out),
        "fingerprint": fp,
        "detections": {k: len(v) for k, v in detections.items()},
    }
