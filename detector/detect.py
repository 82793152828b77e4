"""The test stages: detect (score, regress, NMS, write results) and combine (paper §4.4).

``detect`` scores every proposal of every image with every class SVM, on the features of the
window's best scale, keeps scores above -1.5, regresses those boxes and stores them per image as
*candidates* in WORK/detections/<split>/candidates (a sharded store, so detect resumes after an
interrupt and ``combine`` can take the union of two models' candidates). Per-class NMS at 0.3 and
the top 100 per class then give the detections, written as VOC results files and COCO JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.bbox_reg import BoxRegressor
from sppdet.detector.boxes import clip_boxes
from sppdet.detector.config import DetectConfig, FeatureConfig, ProposalConfig, SppConfig, as_dict
from sppdet.detector.data import Dataset, ImageRecord, read_image
from sppdet.detector.draw import draw_detections
from sppdet.detector.errors import SppdetError
from sppdet.detector.evaluate import ClassDetections, write_coco_results, write_voc_results
from sppdet.detector.features import FeatureCache
from sppdet.detector.featurize import cache_features
from sppdet.detector.heads import FcHead
from sppdet.detector.parallel import Executor, map_shards
from sppdet.detector.postprocess import Candidates, select, threshold_scores
from sppdet.detector.progress import progress_bar
from sppdet.detector.svm import LinearScorer
from sppdet.detector.training import (
    FEATURE_CHUNK,
    MADE_BY,
    SplitInputs,
    feature_head,
    load_bbox,
    load_svm,
    model_name,
    open_split,
)
from sppdet.proposals.stage import raise_for_bad, run_proposals
from sppdet.proposals.store import open_proposals

CANDIDATES_KIND = "candidates"
CANDIDATE_FIELDS = ("windows", "boxes", "scores", "labels")


@dataclass
class Detector:
    """The heads of one trained model, ready to score the pooled features of windows."""

    head: FcHead | None
    layer: str
    scorer: LinearScorer
    svm_scale: float
    regressor: BoxRegressor | None
    bbox_scale: float
    cfg: DetectConfig

    def candidates(
        self, pooled: torch.Tensor, boxes: np.ndarray, width: int, height: int
    ) -> Candidates:
        """Candidates of one image from the pooled features [N, D] of its windows BOXES [N, 4]."""
        with torch.no_grad():
            x = pooled if self.head is None else self.head.features(pooled, self.layer)
        scores = self.scorer.score(x.numpy() * self.svm_scale)
        rows, labels = threshold_scores(scores, self.cfg.score_threshold)
        windows = boxes[rows].astype(np.float32)
        regressed = windows
        if self.regressor is not None and len(rows):
            feats = pooled[torch.from_numpy(rows)].numpy() * self.bbox_scale
            regressed = clip_boxes(self.regressor.apply(windows, feats, labels), width, height)
        return Candidates(windows, regressed.astype(np.float32), scores[rows, labels], labels)


def load_detector(work: WorkDir, inputs: SplitInputs, cfg: DetectConfig, bbox: bool) -> Detector:
    scorer, svm = load_svm(work, inputs)
    head = feature_head(work, inputs, svm["layer"], svm["finetuned"])
    regressor, bbox_scale = load_bbox(work, inputs) if bbox else (None, 1.0)
    return Detector(head, svm["layer"], scorer, float(svm["scale"]), regressor, bbox_scale, cfg)


def detector_fingerprint(
    work: WorkDir, cfg: DetectConfig, bbox: bool, features: str = "spp"
) -> dict[str, Any]:
    svm, box = model_name("svm", features), model_name("bbox", features)
    made = {"svm": work.load_model(svm, MADE_BY[svm])["fingerprint"], "detect": as_dict(cfg)}
    made["bbox"] = work.load_model(box, MADE_BY[box])["fingerprint"] if bbox else None
    if features != "spp":
        made["features"] = features
    return made


def _image_candidates(inputs: SplitInputs, detector: Detector, image_id: str) -> Candidates:
    boxes = inputs.proposals(image_id)
    record_size = inputs.cache.image_info(image_id)
    parts = []
    for start in range(0, len(boxes), FEATURE_CHUNK):
        chunk = boxes[start : start + FEATURE_CHUNK]
        pooled = inputs.cache.pooled(image_id, chunk)
        parts.append(detector.candidates(pooled, chunk, record_size.width, record_size.height))
    return Candidates.concatenate(parts)


def run_detect(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool = True,
    out: Path | None = None,
    force: bool = False,
    executor: Executor | None = None,
    data: str | Path | None = None,
) -> dict[str, Any]:
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
    work.record_stage(f"detect:{split}", {"detect": as_dict(cfg), "bbox": bbox})
    pending = store.pending_shards()
    todo = sum(len(store.shard_image_ids(k)) for k in pending)
    with progress_bar(todo, f"detect {split}") as bar:
        if settings is not None:
            tasks = map_shards(detect_shard, str(store.root), pending, settings, executor=executor)
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
    return {"out": str(out), "detections": {k: len(v) for k, v in detections.items()}}


def _write_candidates(
    writer: ShardWriter,
    image_ids: list[str],
    inputs: SplitInputs,
    detector: Detector,
    on_image: Callable[[], None] | None = None,
) -> None:
    for image_id in image_ids:
        cands = _image_candidates(inputs, detector, image_id)
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


# ------------------------------------------------------------------------ arbitrary images


def _recorded(work: WorkDir, stage: str) -> dict[str, Any]:
    """The settings the first STAGE:<split> entry of WORK's settings.json recorded."""
    for key, entry in work.settings().items():
        if key.split(":")[0] == stage:
            return entry["settings"]
    raise SppdetError(f"{work.settings_path}: no `sppdet {stage}` run recorded; train first")


def _section(cls: type, values: dict[str, Any]) -> Any:
    known = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in values.items()
        if k in cls.__dataclass_fields__
    }
    return cls(**known)


def detect_images(
    work: WorkDir, paths: list[Path], draw: Path | None, cfg: DetectConfig, top: int
) -> dict[str, Any]:
    """Detect on arbitrary image files with WORK's models: proposals and conv5 maps are computed
    on the fly with the settings the models were trained with, in WORK/detections/images."""
    classes = tuple(work.load_model("svm", "sppdet train-svm")["classes"])
    records = []
    for path in paths:
        height, width = read_image(path).shape[:2]
        records.append(ImageRecord(image_id=path.stem, path=path, width=width, height=height))
    if len({r.image_id for r in records}) != len(records):
        raise SppdetError("--image files must have distinct names (their stems are the ids)")
    dataset = Dataset(name="images", split="images", classes=classes, records=records)
    scratch = WorkDir.at(work.detections("images"))
    features = _recorded(work, "cache-features")
    summary = run_proposals(
        dataset, scratch, _section(ProposalConfig, _recorded(work, "propose")), force=True
    )
    raise_for_bad(summary)
    cache_features(
        dataset,
        scratch,
        _section(FeatureConfig, features["features"]),
        _section(SppConfig, features["spp"]),
        force=True,
    )
    proposals = open_proposals(scratch, "images")
    inputs = SplitInputs(dataset, proposals.boxes, FeatureCache.open(scratch, "images"), "")
    detector = load_detector(work, inputs, cfg, bbox=work.model("bbox").is_file())
    found: dict[str, Any] = {}
    for record in records:
        kept = select(_image_candidates(inputs, detector, record.image_id), cfg)
        order = np.argsort(-kept.scores, kind="stable")
        found[str(record.path)] = [
            {
                "class": classes[int(kept.labels[i])],
                "score": float(kept.scores[i]),
                "box": [float(v) for v in kept.boxes[i]],
            }
            for i in order
        ]
        if draw is not None:
            best = order[:top]
            picture = draw_detections(
                read_image(record.path),
                kept.boxes[best],
                kept.labels[best],
                kept.scores[best],
                classes,
            )
            picture.save(draw / f"{record.image_id}.png")
    inputs.cache.close()
    proposals.close()
    return found
