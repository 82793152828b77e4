"""The ``detect`` stage: every proposal of a split scored, NMS, written as VOC and COCO results.

``run_detect`` scores each image's proposals with the work folder's ``WindowScorer`` (scorer.py) and
stores the candidates per image in WORK/detections/<split>/candidates, a sharded store, so detect
resumes after an interrupt and ``combine`` can take the union of two models' candidates. Scoring
runs on the runtime's device, the next images' conv5 maps read ahead by a reader thread. Shards
run in this process or as Ray tasks (``detect_shard``, which reopen the split from
``detect_settings``). ``finish`` then applies the released post-processing (postprocess.py:
per-class NMS at 0.3 and the top 100 per image, at most 5 x images per class over the split,
NMS at 0.3 again on the regressed boxes) and writes the VOC results files and COCO JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
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
from sppdet.detector.detection.postprocess import (
    Candidates,
    SplitTopK,
    select,
    suppress_regressed,
)
from sppdet.detector.detection.scorer import (
    FEATURE_CHUNK,
    WindowScorer,
    detector_fingerprint,
    image_candidates,
    load_window_scorer,
    uncalibrated,
)
from sppdet.detector.evaluation.coco import (
    has_annotations,
    results_name,
    write_coco_ground_truth,
    write_coco_results,
)
from sppdet.detector.evaluation.results import write_voc_results
from sppdet.detector.evaluation.voc import ClassDetections
from sppdet.detector.heads.lowrank import FcRank
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


def results_folder(inputs: SplitInputs, scoring: str = "svm", fc_rank: FcRank | None = None) -> str:
    """The folder of WORK/detections/ of INPUTS scored by SCORING: test (the SVMs), test-softmax;
    with fc6/fc7 at ranks FC_RANK, test-fc512x256 (test-softmax-fc512x256, and
    test-fc512x256-weights for the weights' fit)."""
    name = inputs.results_name if scoring == "svm" else f"{inputs.results_name}-{scoring}"
    return name if fc_rank is None else f"{name}-fc{fc_rank.tag}"


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
    scoring: str = "svm",
    min_probability: float = 0.0,
    fc_rank: FcRank | None = None,
) -> ScoredDetectResult:
    """Detect on every image of the split on the runtime's device; returns the output folder
    and detection counts (and, with mixed precision, how far it moves the scores).

    EXECUTOR runs the candidates' shards: local (default) in this process, or Ray, whose tasks
    (``detect_shard``) reopen the split from DATA, the dataset INPUTS were opened from.
    SCORING picks the scorer (scorer.SCORERS; softmax's results go to WORK/detections/S-softmax);
    the results keep the detections whose probability is above MIN_PROBABILITY (0: all).
    FC_RANK replaces fc6/fc7 by rank-r layers (``fc_rank.compressed_head``; results in
    S-fcR6xR7).
    """
    runtime = runtime or Runtime()
    inputs.check_images()
    inputs.to(runtime.device)
    remote = executor is not None and executor.kind != "local"
    settings = (
        detect_settings(work, inputs, cfg, bbox, data, runtime, scoring, fc_rank)
        if remote
        else None
    )
    detector = load_window_scorer(work, inputs, cfg, bbox, runtime, scoring, fc_rank)
    if min_probability > 0 and scoring == "svm" and detector.calibration is None:
        raise SppdetError(uncalibrated(str(work.model(inputs.model("svm")))))
    split = inputs.dataset.split
    params = {
        **detector_fingerprint(work, cfg, bbox, inputs.features, scoring, fc_rank),
        INPUTS_KEY: inputs.inputs_fingerprint,
        **precision_setting(runtime),
    }
    ids = [r.image_id for r in inputs.dataset.records]
    name = results_folder(inputs, scoring, fc_rank)
    root = work.detections(name) / "candidates"
    models = _models_made_from(work, bbox, inputs.features)
    # Another scorer's run is recorded apart: ``evaluate --work`` finds the SVMs' results.
    recorded_as = split if name == inputs.results_name else name
    if not force:
        _refuse_other_candidates(work, root, recorded_as, params, models)
    store = ShardedStore.create(root, CANDIDATES_KIND, params, ids, 8, force=force)
    out = out or work.detections(name)
    found = {  # where the dataset and the results are, for ``evaluate --work``
        "data": None if data is None else str(Path(data).absolute()),
        "split": split,
        "classes": list(inputs.dataset.classes),
        # inside the work folder: relative to it, so that a moved or copied folder finds its own
        "out": str(out.relative_to(work.root) if out.is_relative_to(work.root) else out.absolute()),
    }
    work.record(
        "detect", recorded_as, {"detect": as_dict(cfg), "bbox": bbox, "models": models, **found}
    )
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
    keep = partial(detector.above, threshold=min_probability)
    detections = finish([store], inputs.dataset, cfg, out, runtime.device, keep)
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
    scoring: str = "svm",
    fc_rank: FcRank | None = None,
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
        "scoring": scoring,
        "fc_rank": fc_rank,  # the driver saved the truncated head in WORK/models: read there
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
        detector = load_window_scorer(
            work,
            inputs,
            settings["detect"],
            settings["bbox"],
            runtime,
            settings["scoring"],
            settings["fc_rank"],
        )
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
    keep: Callable[[Candidates], Candidates] | None = None,
) -> Mapping[str, ClassDetections]:
    """NMS (on DEVICE) over the union of the stores' candidates per image, then KEEP (e.g. a
    probability threshold) of each image's survivors, if given; at most 5 x images per class
    over the split; NMS again on the regressed boxes (postprocess.py); write VOC and COCO
    results."""
    per_class: dict[int, list[tuple[str, Candidates]]] = {}
    top = SplitTopK(len(dataset.classes), cfg.max_per_split_factor * len(dataset.records))
    for i, record in enumerate(dataset.records):
        union = Candidates.concatenate([read_candidates(s, record.image_id) for s in stores])
        kept = select(top.admit(union), cfg, device)
        top.add(i, kept if keep is None else keep(kept))
    for i, found in top.result():
        kept = suppress_regressed(found, cfg.nms_iou, device)
        for k in np.unique(kept.labels):
            per_class.setdefault(int(k), []).append(
                (dataset.records[i].image_id, kept.take(np.nonzero(kept.labels == k)[0]))
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
    write_coco_results(out / results_name(dataset.split), dataset, detections)
    if has_annotations(dataset):  # the ground truth the results' ids refer to
        write_coco_ground_truth(out, dataset)
    return detections
