"""The ``detect`` stage: every proposal of a split scored, NMS, written as VOC and COCO results.

``run_detect`` scores each image's proposals with the work folder's ``Detector`` (scorer.py) and
stores the candidates per image in WORK/detections/<split>/candidates, a sharded store, so detect
resumes after an interrupt and ``combine`` can take the union of two models' candidates. Shards
run in this process or as Ray tasks (``detect_shard``, which reopen the split from
``detect_settings``). ``finish`` then applies per-class NMS at 0.3 and the top 100 per class
(postprocess.py) and writes the VOC results files and COCO JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.atomic import remove_stale_temporaries
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import (
    DetectConfig,
    as_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor, map_shards
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.postprocess import Candidates, select
from sppdet.detector.detection.scorer import (
    Detector,
    detector_fingerprint,
    image_candidates,
    load_detector,
)
from sppdet.detector.evaluation.coco import write_coco_results
from sppdet.detector.evaluation.results import write_voc_results
from sppdet.detector.evaluation.voc import ClassDetections
from sppdet.detector.training.inputs import SplitInputs, open_split

CANDIDATES_KIND = "candidates"


CANDIDATE_FIELDS = ("windows", "boxes", "scores", "labels")


@dataclass(frozen=True)
class DetectResult:
    """Where ``run_detect`` wrote the results of a split, and its detections per class."""

    out: Path
    detections: dict[str, int]


def run_detect(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool = True,
    out: Path | None = None,
    force: bool = False,
    executor: Executor | None = None,
    data: str | Path | None = None,
) -> DetectResult:
    """Detect on every image of the split; returns the output folder and detection counts.

    EXECUTOR runs the candidates' shards: local (default) in this process, or Ray, whose tasks
    (``detect_shard``) reopen the split from DATA, the dataset INPUTS were opened from.
    """
    inputs.check_images()
    remote = executor is not None and executor.kind != "local"
    settings = detect_settings(work, inputs, cfg, bbox, data) if remote else None
    detector = load_detector(work, inputs, cfg, bbox)
    split = inputs.dataset.split
    params = {
        **detector_fingerprint(work, cfg, bbox, inputs.features),
        "inputs": inputs.inputs_fingerprint,
    }
    ids = [r.image_id for r in inputs.dataset.records]
    store = ShardedStore.create(
        work.detections(inputs.results_name) / "candidates",
        CANDIDATES_KIND,
        params,
        ids,
        8,
        force=force,
    )
    work.record("detect", split, {"detect": as_dict(cfg), "bbox": bbox})
    pending = store.pending_shards()
    todo = sum(len(store.shard_image_ids(k)) for k in pending)
    with progress_bar(todo, f"detect {split}") as bar:
        if settings is not None:
            tasks = map_shards(
                detect_shard,
                str(store.root),
                pending,
                settings,
                executor=executor,
                sweep=remove_stale_temporaries,
            )
            for _, images in tasks:
                bar.advance(images)
        else:
            for shard in pending:
                store.write_shard(
                    shard,
                    lambda writer, image_ids: _write_candidates(
                        writer, image_ids, inputs, detector, bar.advance
                    ),
                )
    out = out or work.detections(inputs.results_name)
    detections = finish([store], inputs.dataset, cfg, out)
    store.close()
    return DetectResult(out, {k: len(v) for k, v in detections.items()})


def _write_candidates(
    writer: ShardWriter,
    image_ids: list[str],
    inputs: SplitInputs,
    detector: Detector,
    on_image: Callable[[], None] | None = None,
) -> None:
    for image_id in image_ids:
        cands = image_candidates(inputs, detector, image_id)
        for name in CANDIDATE_FIELDS:
            writer.put(image_id, name, getattr(cands, name))
        if on_image is not None:
            on_image()


def detect_settings(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool,
    data: str | Path | None,
) -> dict[str, Any]:
    """What a ``detect_shard`` task needs to rebuild INPUTS and the detector in its process.

    Plain picklable values, paths absolute (a worker's folder is not ours). To add a setting,
    add a key here and read it in ``_worker_detector``; the worker's cache key covers every key.
    """
    if data is None:
        raise SppdetError("detect with --executor ray needs --data: its tasks reopen the split")
    return {
        "work": str(Path(work.root).absolute()),
        "data": str(Path(data).absolute()),
        "split": inputs.dataset.split,
        "classes": list(inputs.dataset.classes),
        "features": inputs.features,
        "detect": cfg,
        "bbox": bbox,
        "inputs": inputs.inputs_fingerprint,  # the worker checks it sees the same stores
    }


# Per worker process: the split's inputs and the detector of the last settings used.
_worker_state: tuple[str, SplitInputs, Detector] | None = None


def _worker_detector(settings: dict[str, Any]) -> tuple[SplitInputs, Detector]:
    global _worker_state
    key = repr(sorted(settings.items()))
    if _worker_state is None or _worker_state[0] != key:
        if _worker_state is not None:
            _worker_state[1].cache.close()
            _worker_state = None
        work = WorkDir.at(settings["work"])
        inputs = open_split(
            work,
            settings["data"],
            settings["split"],
            settings["classes"],
            features=settings["features"],
        )
        if inputs.inputs_fingerprint != settings["inputs"]:
            raise SppdetError(
                f"{work.root}: this node sees other proposals or features than the driver; "
                "put the work folder on a filesystem shared by every node"
            )
        detector = load_detector(work, inputs, settings["detect"], settings["bbox"])
        _worker_state = (key, inputs, detector)
    return _worker_state[1], _worker_state[2]


def detect_shard(root: str, shard: int, settings: dict[str, Any]) -> int:
    """Score and write shard SHARD of the candidates store at ROOT (a ``map_shards`` task);
    returns its number of images. SETTINGS: see ``detect_settings``."""
    inputs, detector = _worker_detector(settings)
    store = ShardedStore.open(root, CANDIDATES_KIND, "sppdet detect", require_complete=False)
    try:
        store.write_shard(
            shard, lambda writer, image_ids: _write_candidates(writer, image_ids, inputs, detector)
        )
        return len(store.shard_image_ids(shard))
    finally:
        store.close()


def read_candidates(store: ShardedStore, image_id: str) -> Candidates:
    return Candidates(*(store.get(image_id, name) for name in CANDIDATE_FIELDS))


def finish(
    stores: list[ShardedStore], dataset: Dataset, cfg: DetectConfig, out: Path
) -> Mapping[str, ClassDetections]:
    """NMS over the union of the stores' candidates per image; write VOC and COCO results."""
    per_class: dict[int, list[tuple[str, Candidates]]] = {}
    for record in dataset.records:
        kept = select(
            Candidates.concatenate([read_candidates(s, record.image_id) for s in stores]), cfg
        )
        for k in np.unique(kept.labels):
            per_class.setdefault(int(k), []).append(
                (record.image_id, kept.take(np.nonzero(kept.labels == k)[0]))
            )
    detections = {}
    for k, name in enumerate(dataset.classes):
        parts = per_class.get(k, [])
        detections[name] = ClassDetections(
            np.concatenate([[i] * len(c) for i, c in parts]) if parts else np.zeros(0, str),
            np.concatenate([c.scores for _, c in parts]) if parts else np.zeros(0),
            np.concatenate([c.boxes for _, c in parts]) if parts else np.zeros((0, 4)),
        )
    write_voc_results(out, dataset.split, dataset.classes, detections)
    write_coco_results(out / f"coco_results_{dataset.split}.json", dataset, detections)
    return detections
