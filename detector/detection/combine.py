"""The ``combine`` stage: model combination (paper §4.4) over several work folders' detections.

Every folder must have run ``detect`` on the same split with models of the same classes; the
union of their stored candidates goes through the same post-processing as one model's
(``stage.finish``: NMS over the union, the top 100 per image, the split's cap, then NMS again on
the regressed boxes), each survivor keeping its own model's regressed box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import DetectConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.stage import CANDIDATES_KIND, DetectResult, finish


@dataclass(frozen=True)
class CombineResult(DetectResult):
    """``DetectResult`` of the combination, and the fingerprint of what it combined."""

    fingerprint: str


def run_combine(
    works: list[WorkDir],
    dataset: Dataset,
    cfg: DetectConfig,
    out: Path,
    device: torch.device | str = "cpu",
) -> CombineResult:
    """Model combination: NMS (on DEVICE) over the union of several work folders' candidates
    (paper section 4.4)."""
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
    detections = finish(stores, dataset, cfg, out, device)
    for store in stores:
        store.close()
    return CombineResult(out, {k: len(v) for k, v in detections.items()}, fp)
