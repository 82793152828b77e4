"""The `propose` stage: compute (or import) the proposals of a split into its sharded store.

Shards are the unit of work and of resume: ``run_proposals`` creates the store (its params from
the method table, proposals/methods.py), hands the missing shards to an executor as
``propose_shard`` tasks (proposals/shard_task.py) and sums up what they did. A task writes its
shard atomically, so an interrupted run leaves complete shards plus at most some temporaries
(removed on the next run); a re-run computes only the missing shards. The files are
byte-identical whatever the number of workers or interruptions.

An unreadable image is stored with zero boxes and ``bad=True``, reported on stderr and listed at
the end; shards that hold such images are recomputed on the next run, in case the file was fixed.
Per-image compute times go to WORK/reports/propose-<split>.json, not into the shards, so that
the shard files stay reproducible.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sppdet.cache.atomic import read_json, remove_stale_temporaries, write_json
from sppdet.cache.fingerprint import file_hash
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.detector.core.config import ProposalConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor, map_shards
from sppdet.detector.core.progress import Bar, progress_bar
from sppdet.detector.data.records import Dataset
from sppdet.proposals.importer import read_rcnn_mat
from sppdet.proposals.methods import ALGORITHM_VERSION, edge_methods, method_params, proposal_method
from sppdet.proposals.ranking import finalize
from sppdet.proposals.shard_task import BadImage, ShardOutcome, propose_shard, write_boxes
from sppdet.proposals.store import KIND, ProposalStore
from sppdet.proposals.structured_edges import check_edge_model

if TYPE_CHECKING:  # workdir imports torch; worker processes never need it
    from sppdet.cache.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass
class ProposeSummary:
    store: Path
    method: str
    images: int  # in the split
    computed: int  # images (re)computed by this run
    mean_boxes: float  # over the readable images of the whole store
    seconds_per_image: float | None  # mean compute time per readable image, all runs
    cpu_seconds_per_image: float | None  # the same in CPU time
    wall_seconds: float  # this run
    workers: int
    bad: list[BadImage] = field(default_factory=list)  # the whole store's unreadable images
    executor: str = "1 worker(s)"  # where the shards ran, in words

    @property
    def resumed(self) -> int:
        return self.images - self.computed


def timing_report_name(split: str) -> str:
    return f"propose-{split}.json"


def _shards_with_bad_images(store: ShardedStore) -> list[int]:
    done = set(range(store.num_shards)) - set(store.pending_shards())
    try:
        return [
            k for k in sorted(done)
            if any(store.image_attrs(i).get("bad", False) for i in store.shard_image_ids(k))
        ]  # fmt: skip
    finally:
        store.close()  # these shards are about to be replaced: drop the read handles


def _load_timing(path: Path, fp: str) -> dict[str, list[float]]:
    if path.is_file():
        try:
            report = read_json(path)
        except (OSError, ValueError):
            return {}
        if report.get("fingerprint") == fp:
            shards = report.get("shards", {})
            return {str(k): list(v) for k, v in shards.items() if len(v) == 3}
    return {}


def _save_timing(
    path: Path, fp: str, method: str, shards: dict[str, list[float]]
) -> tuple[float | None, float | None]:
    """Write per-shard [images, seconds, cpu seconds]; returns (s/image, cpu s/image)."""
    images = sum(v[0] for v in shards.values())
    wall, cpu = (sum(v[i] for v in shards.values()) / images if images else None for i in (1, 2))
    write_json(
        path,
        {"fingerprint": fp, "method": method, "images_timed": images,
         "seconds_per_image": wall, "cpu_seconds_per_image": cpu, "shards": shards},
    )  # fmt: skip
    return wall, cpu


def _summarise(
    root: Path,
    method: str,
    computed: int,
    per_image: tuple[float | None, float | None],
    wall: float,
    executor: Executor,
) -> ProposeSummary:
    with ProposalStore.open(root) as store:
        bad = [BadImage(i, reason) for i, reason in store.bad_images()]
        bad_ids = {b.image_id for b in bad}
        counts = [store.count(i) for i in store.image_ids if i not in bad_ids]
        return ProposeSummary(
            store=root,
            method=method,
            images=len(store.image_ids),
            computed=computed,
            mean_boxes=float(np.mean(counts)) if counts else 0.0,
            seconds_per_image=per_image[0],
            cpu_seconds_per_image=per_image[1],
            wall_seconds=wall,
            workers=executor.workers,
            bad=bad,
            executor=executor.describe(),
        )


def _edge_model_for(method: str, edge_model: str | Path) -> Path:
    """EDGE_MODEL, checked, when METHOD reads edge maps; a user error otherwise."""
    if not proposal_method(method).uses_edges:
        raise SppdetError(
            f"--edge-model is used by --method {' or '.join(edge_methods())}, not {method!r}"
        )
    return check_edge_model(edge_model)


def _account(
    shard: int, outcome: ShardOutcome, timing: dict[str, list[float]], bar: Bar | None
) -> None:
    """Take in one finished shard task: its times, its unreadable images, the progress bar."""
    timing[str(shard)] = [outcome.images, outcome.seconds, outcome.cpu_seconds]
    for bad in outcome.bad:
        log.warning("skipped unreadable image: %s", bad.reason)
    if bar is not None:
        bar.advance(outcome.images + len(outcome.bad))


def run_proposals(
    dataset: Dataset,
    work: WorkDir,
    cfg: ProposalConfig,
    *,
    workers: int = 1,
    force: bool = False,
    edge_model: str | Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> ProposeSummary:
    """Compute the proposals of DATASET's split into WORK/proposals/<split>/ (resuming).

    EXECUTOR runs the shard tasks (default: WORKERS local processes); the store is the same
    whichever runs them. Unreadable images are recorded (``summary.bad``), not raised: see
    ``raise_for_bad``.
    """
    executor = executor or Executor("local", workers)
    if edge_model is not None:
        edge_model = _edge_model_for(cfg.method, edge_model)
    params = method_params(cfg, edge_model)
    ids = [r.image_id for r in dataset.records]
    root = work.proposals(dataset.split)
    store = ShardedStore.create(root, KIND, params, ids, cfg.shard_size, force=force)
    work.record("propose", dataset.split, params)
    pending = sorted(set(store.pending_shards()) | set(_shards_with_bad_images(store)))
    timing_path = work.report(timing_report_name(dataset.split))
    timing = _load_timing(timing_path, store.meta.fingerprint)
    settings = {
        "config": cfg,
        # Absolute: a Ray worker's working folder is not the caller's.
        "paths": {r.image_id: str(Path(r.path).absolute()) for r in dataset.records},
        "edge_model": None if edge_model is None else str(Path(edge_model).absolute()),
    }
    total = sum(len(store.shard_image_ids(k)) for k in pending)
    start = time.perf_counter()
    bar_context = (
        progress_bar(total, f"propose {cfg.method} {dataset.split}", unit="img")
        if progress
        else nullcontext(None)
    )
    try:
        with bar_context as bar:
            tasks = map_shards(
                propose_shard,
                str(root),
                pending,
                settings,
                executor=executor,
                sweep=remove_stale_temporaries,
            )
            for shard, outcome in tasks:
                _account(shard, outcome, timing, bar)
    finally:  # keep the times of the shards that finished, even on Ctrl-C
        per_image = _save_timing(timing_path, store.meta.fingerprint, cfg.method, timing)
    return _summarise(root, cfg.method, total, per_image, time.perf_counter() - start, executor)


def import_proposals(
    dataset: Dataset,
    work: WorkDir,
    mat_file: str | Path,
    *,
    min_side: int,
    max_boxes: int | None = None,
    shard_size: int = ProposalConfig.shard_size,
    force: bool = False,
) -> ProposeSummary:
    """Store the boxes of an R-CNN .mat file as DATASET's proposals, in the file's order.

    Boxes are clipped to the annotated image size, filtered by MIN_SIDE and de-duplicated; all
    are kept unless MAX_BOXES. Every image of the split must be in the file.
    """
    mat_file = Path(mat_file)
    boxes_by_id = read_rcnn_mat(mat_file)
    missing = [r.image_id for r in dataset.records if r.image_id not in boxes_by_id]
    if missing:
        raise SppdetError(
            f"{mat_file}: {len(missing)} of {len(dataset)} images of split {dataset.split!r} are "
            f"not in the file (e.g. {missing[0]!r}); import a file made for this split"
        )
    params = {
        "method": "import",
        "source": mat_file.name,
        "source_hash": file_hash(mat_file),
        "min_side": min_side,
        "max_boxes": max_boxes,
        "algorithm_version": ALGORITHM_VERSION,
    }
    ids = [r.image_id for r in dataset.records]
    root = work.proposals(dataset.split)
    store = ShardedStore.create(root, KIND, params, ids, shard_size, force=force)
    work.record("propose", dataset.split, params)
    by_id = dataset.by_id()
    limit = max_boxes if max_boxes is not None else np.iinfo(np.int64).max

    def fill(writer: ShardWriter, image_ids: list[str]) -> None:
        for image_id in image_ids:
            record = by_id[image_id]
            raw = boxes_by_id[image_id]
            order = np.arange(len(raw), dtype=np.float64)  # keep the published order
            boxes = finalize(raw, order, record.width, record.height, min_side, limit)
            write_boxes(writer, image_id, boxes, record.width, record.height)

    start = time.perf_counter()
    pending = store.pending_shards()
    for shard in pending:
        store.write_shard(shard, fill)
    computed = sum(len(store.shard_image_ids(k)) for k in pending)
    wall = time.perf_counter() - start
    return _summarise(root, "import", computed, (None, None), wall, Executor())


def raise_for_bad(summary: ProposeSummary) -> None:
    """Fail (one line) when the store holds unreadable images; ``--skip-bad`` skips this."""
    if summary.bad:
        first = summary.bad[0].reason  # "<file>: <what>"
        raise SppdetError(
            f"{first} (stored with zero boxes; {len(summary.bad)} unreadable image(s) in all) ; "
            "fix or remove them and rerun to recompute their shards, or pass --skip-bad to accept"
        )
