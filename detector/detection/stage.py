"""The ``detect`` stage: every proposal of a split scored, NMS, written as VOC and COCO results.

``run_detect`` scores each image's proposals with the work folder's ``WindowScorer`` (scorer.py) and
stores the candidates per image in WORK/detections/<split>/candidates, a sharded store, so detect
resumes after an interrupt and ``combine`` can take the union of two models' candidates. Scoring
runs on the runtime's device, the next images' conv5 maps read ahead by a reader thread. Shards
run in this process or as Ray tasks (``detect_shard``, which reopen the split from
``detect_settings``). ``finish`` then applies per-class NMS at 0.3 and the top 100 per class
(postprocess.py) and writes the VOC results files and COCO JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.atomic import remove_stale_temporaries
from sppdet.cache.fingerprint import compare_settings
from sppdet.cache.shards import META_NAME, ShardedStore, ShardWriter
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
    FEATURE_CHUNK,
    WindowScorer,
    detector_fingerprint,
    image_candidates,
    load_window_scorer,
)
from sppdet.detector.evaluation.coco import write_coco_results
from sppdet.detector.evaluation.results import write_voc_results
from sppdet.detector.evaluation.voc import ClassDetections
from sppdet.detector.training.inputs import (
    MADE_BY,
    SplitInputs,
    model_name,
    open_split,
)
from sppdet.detector.training.prefetch import read_ahead
from sppdet.detector.training.runtime import EtaCheck, PrecisionDrift, Runtime, precision_setting

log = logging.getLogger(__name__)

CANDIDATES_KIND = "candidates"


CANDIDATE_FIELDS = ("windows", "boxes", "scores", "labels")

SHORTER_DETECT = "a smaller --split"  # the ETA warning's advice


@dataclass(frozen=True)
class DetectResult:
    """Where ``run_detect`` wrote the results of a split, and its detections per class."""

    out: Path
    detections: dict[str, int]


@dataclass(frozen=True)
class ScoredDetectResult(DetectResult):
    """``DetectResult`` of ``run_detect``, with the mixed-precision check when there is one."""

    drift: PrecisionDrift | None = None  # with --precision bf16/fp16: SVM scores vs fp32


def run_detect(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool = True,
    out: Path | None = None,
    force: bool = False,
    executor: Executor | None = None,
    data: str | Path | None = None,
    runtime: Runtime | None = None,
) -> ScoredDetectResult:
    """Detect on every image of the split on the runtime's device; returns the output folder
    and detection counts (and, with mixed precision, how far it moves the scores).

    EXECUTOR runs the candidates' shards: local (default) in this process, or Ray, whose tasks
    (``detect_shard``) reopen the split from DATA, the dataset INPUTS were opened from.
    """
    runtime = runtime or Runtime()
    inputs.check_images()
    inputs.to(runtime.device)
    remote = executor is not None and executor.kind != "local"
    settings = detect_settings(work, inputs, cfg, bbox, data, runtime) if remote else None
    detector = load_window_scorer(work, inputs, cfg, bbox, runtime)
    split = inputs.dataset.split
    params = {
        **detector_fingerprint(work, cfg, bbox, inputs.features),
        INPUTS_KEY: inputs.inputs_fingerprint,
        **precision_setting(runtime),
    }
    ids = [r.image_id for r in inputs.dataset.records]
    root = work.detections(inputs.results_name) / "candidates"
    models = _models_made_from(work, bbox, inputs.features)
    if not force:
        _refuse_other_candidates(work, root, split, params, models)
    store = ShardedStore.create(root, CANDIDATES_KIND, params, ids, 8, force=force)
    work.record("detect", split, {"detect": as_dict(cfg), "bbox": bbox, "models": models})
    pending = store.pending_shards()
    todo = sum(len(store.shard_image_ids(k)) for k in pending)
    drift = _drift(inputs, detector, store.shard_image_ids(pending[0])[0]) if pending else None
    eta = EtaCheck("detect", todo, "img", runtime, SHORTER_DETECT)
    with progress_bar(todo, f"detect {split}") as bar:

        def advance(images: int = 1) -> None:
            bar.advance(images)
            eta.advance(images)

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
                advance(images)
        else:
            for shard in pending:
                store.write_shard(
                    shard,
                    lambda writer, image_ids: _write_candidates(
                        writer, image_ids, inputs, detector, advance
                    ),
                )
    out = out or work.detections(inputs.results_name)
    detections = finish([store], inputs.dataset, cfg, out, runtime.device)
    store.close()
    return ScoredDetectResult(out, {k: len(v) for k, v in detections.items()}, drift)


MODEL_KEYS = ("svm", "bbox")  # candidates' params that are model fingerprints
INPUTS_KEY = "inputs"  # the candidates' param that fingerprints the split's stores


def _models_made_from(work: WorkDir, bbox: bool, features: str) -> dict[str, Any]:
    """What the SVMs (and the regressors) scoring the candidates were made from: recorded
    with the detect settings, so a later mismatch can name the settings, not two hashes."""
    out: dict[str, Any] = {}
    for base in MODEL_KEYS if bbox else MODEL_KEYS[:1]:
        name = model_name(base, features)
        out[base] = work.load_model(name, MADE_BY[name])["made_from"]
    return out


def _refuse_other_candidates(
    work: WorkDir, root: Path, split: str, params: dict[str, Any], models: dict[str, Any]
) -> None:
    """Refuse a candidates store scored with other settings, naming each setting that differs
    with both values: the detect settings, and the settings of a model retrained since (as
    recorded by the detect run that scored them)."""
    if not (root / META_NAME).is_file():
        return
    try:
        with ShardedStore.open(
            root, CANDIDATES_KIND, "sppdet detect", require_complete=False
        ) as old:
            found = old.meta.params
    except SppdetError:
        return  # an unreadable store: ``ShardedStore.create`` says what is wrong with it
    plain = [k for k in set(found) | set(params) if k not in (*MODEL_KEYS, INPUTS_KEY)]
    what = compare_settings(
        {k: found[k] for k in plain if k in found},
        {k: params[k] for k in plain if k in params},
        "candidates",
        "asked",
    )
    if found.get(INPUTS_KEY) != params.get(INPUTS_KEY):
        what.append(f"the proposals or conv5 maps of {split} changed since they were scored")
    then = (work.recorded("detect", split) or {}).get("models", {})
    for key in MODEL_KEYS:
        if found.get(key) == params.get(key):
            continue
        before, now = then.get(key), models.get(key)
        if before is not None and now is not None:
            what += [
                f"{key}.{line}" for line in compare_settings(before, now, "candidates", "asked")
            ]
        elif found.get(key) is None or params.get(key) is None:
            used = {True: "a trained model", False: "none"}
            what.append(
                f"{key}: {used[found.get(key) is not None]} (candidates) vs "
                f"{used[params.get(key) is not None]} (asked)"
            )
        else:
            what.append(f"{key}: the model was retrained since the candidates were scored")
    if what:
        raise SppdetError(
            f"{root}: candidates scored with other settings ({'; '.join(what)}); rerun with "
            "--force to score them again, or detect in another --work folder"
        )


def _write_candidates(
    writer: ShardWriter,
    image_ids: list[str],
    inputs: SplitInputs,
    detector: WindowScorer,
    on_image: Callable[[], None] | None = None,
) -> None:
    """Score every proposal of IMAGE_IDS (their maps read ahead) and store the candidates."""
    with read_ahead(inputs.cache, image_ids, lambda image_id: (image_id, None)) as ready:
        for image_id in ready:
            cands = image_candidates(inputs, detector, image_id)
            for name in CANDIDATE_FIELDS:
                writer.put(image_id, name, getattr(cands, name))
            if on_image is not None:
                on_image()


def _drift(inputs: SplitInputs, detector: WindowScorer, image_id: str) -> PrecisionDrift | None:
    """With mixed precision, how far the SVM scores of IMAGE_ID's proposals move from fp32."""
    if detector.runtime.precision == "fp32" or detector.head is None:
        return None
    boxes = inputs.proposals(image_id)[:FEATURE_CHUNK]
    pooled = inputs.cache.pooled(image_id, boxes).to(detector.runtime.device)
    drift = PrecisionDrift.measure(detector.scores(pooled, "fp32"), detector.scores(pooled))
    log.info("detect: %s", drift.describe(detector.runtime.precision, "SVM scores"))
    return drift


def detect_settings(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool,
    data: str | Path | None,
    runtime: Runtime | None = None,
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
        "device": str((runtime or Runtime()).device),
        "precision": (runtime or Runtime()).precision,
    }


# Per worker process: the split's inputs and the detector of the last settings used.
_worker_state: tuple[str, SplitInputs, WindowScorer] | None = None


def _worker_detector(settings: dict[str, Any]) -> tuple[SplitInputs, WindowScorer]:
    global _worker_state
    key = repr(sorted(settings.items()))
    if _worker_state is None or _worker_state[0] != key:
        if _worker_state is not None:
            _worker_state[1].cache.close()
            _worker_state = None
        work = WorkDir.at(settings["work"])
        runtime = Runtime.create(settings["device"], settings["precision"])
        inputs = open_split(
            work,
            settings["data"],
            settings["split"],
            settings["classes"],
            features=settings["features"],
            device=runtime.device,
        )
        if inputs.inputs_fingerprint != settings["inputs"]:
            raise SppdetError(
                f"{work.root}: this node sees other proposals or features than the driver; "
                "put the work folder on a filesystem shared by every node"
            )
        detector = load_window_scorer(work, inputs, settings["detect"], settings["bbox"], runtime)
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
    stores: list[ShardedStore],
    dataset: Dataset,
    cfg: DetectConfig,
    out: Path,
    device: torch.device | str = "cpu",
) -> Mapping[str, ClassDetections]:
    """NMS (on DEVICE) over the union of the stores' candidates per image; write VOC and COCO
    results."""
    per_class: dict[int, list[tuple[str, Candidates]]] = {}
    for record in dataset.records:
        union = Candidates.concatenate([read_candidates(s, record.image_id) for s in stores])
        kept = select(union, cfg, device)
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
