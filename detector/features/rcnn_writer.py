"""The R-CNN feature stage (``cache-features --features rcnn``): pool5 of every window an image
needs, computed R-CNN's way (``sppdet.detector.features.rcnn_warp``) and stored.

The store (kind ``rcnn-features``, WORK/rcnn-features/<split>): per image, ``boxes`` float32
[M, 4], the distinct windows of the image (its ground-truth boxes and its proposals), and
``pool5`` [M, D] float16; image attributes height and width. Its settings cover the trunk and
weights, the pyramid, the warp, the precision and the fingerprints of the proposals and of the
ground-truth boxes. A rerun computes only the missing shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import describe_weights, load_backbone, weights_kind
from sppdet.detector.core.config import FeatureConfig, RcnnConfig, SppConfig, as_dict
from sppdet.detector.core.device import check_precision, resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.features.rcnn_warp import RcnnFeaturizer, warp_size
from sppdet.detector.features.writer import random_weights_warning
from sppdet.detector.spp.bins import check_pyramid
from sppdet.proposals.store import open_proposals

KIND = "rcnn-features"
MADE_BY = "sppdet cache-features --features rcnn"
STAGE = "cache-features-rcnn"  # its entry in settings.json
LAYOUT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
PER_SPLIT_PARAMS = ("proposals", "ground_truth")  # which windows a store holds, not their values

log = logging.getLogger(__name__)


def image_windows_union(record: ImageRecord, proposals: np.ndarray) -> np.ndarray:
    """The distinct windows whose features an image needs: its ground-truth boxes and proposals,
    float32 [M, 4], in a canonical (sorted) order."""
    boxes = np.concatenate([record.boxes.reshape(-1, 4), proposals.reshape(-1, 4)])
    return np.unique(boxes.astype(np.float32), axis=0)


def rcnn_params(
    features: FeatureConfig,
    spp: SppConfig,
    config: RcnnConfig,
    proposals_fingerprint: str,
    dataset: Dataset,
) -> dict[str, Any]:
    """The settings that define an R-CNN feature store's content (its fingerprint); checked, so
    that a store is never created with settings the featurizer would refuse."""
    check_precision(config.precision)
    if config.dtype not in DTYPES:
        raise SppdetError(f"--dtype {config.dtype!r}: choose float16 or float32")
    if config.context_padding < 0 or 2 * config.context_padding >= warp_size(
        config, features.backbone
    ):
        raise SppdetError(
            f"--context-padding {config.context_padding}: must be >= 0 and below half the warp"
        )
    weights_id, pre = describe_weights(features.backbone, features.weights)
    gt = {r.image_id: r.boxes.astype(np.float32).ravel().tolist() for r in dataset.records}
    return {
        "layout": LAYOUT_VERSION,
        "backbone": features.backbone,
        "weights": weights_id,
        "preprocessing": pre.to_dict(),
        "pyramid": list(check_pyramid(spp.pyramid)),
        "warp_size": warp_size(config, features.backbone),
        "context_padding": int(config.context_padding),
        "precision": config.precision,
        "dtype": config.dtype,
        "proposals": proposals_fingerprint,
        "ground_truth": fingerprint(gt),
    }


@dataclass
class RcnnStats:
    root: Path
    images: int
    computed: int
    windows: int = 0
    seconds: float = 0.0


def cache_rcnn_features(
    dataset: Dataset,
    work: WorkDir | str | Path,
    features: FeatureConfig,
    spp: SppConfig,
    config: RcnnConfig,
    force: bool = False,
    progress: bool = True,
) -> RcnnStats:
    """Build (or resume) the R-CNN pool5 store of DATASET's split: every proposal and every
    ground-truth box of every image, warped and run through the trunk."""
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    proposals = open_proposals(work, dataset.split)
    params = rcnn_params(features, spp, config, proposals.fingerprint, dataset)
    if weights_kind(features.weights) == "random":
        log.warning(random_weights_warning("cache-features --features rcnn"))
    ids = [r.image_id for r in dataset.records]
    root = work.rcnn_features(dataset.split)
    store = ShardedStore.create(root, KIND, params, ids, config.shard_size, force=force)
    work.record(
        STAGE,
        dataset.split,
        {
            "features": as_dict(features),
            "spp": as_dict(spp),
            "rcnn": as_dict(config),
            "store": params,
        },
    )
    pending = store.pending_shards()
    stats = RcnnStats(root, len(ids), sum(len(store.shard_image_ids(k)) for k in pending))
    if pending:
        device = resolve_device(features.device)
        featurizer = RcnnFeaturizer(
            load_backbone(features.backbone, features.weights), spp.pyramid, config, device
        )
        by_id = dataset.by_id()
        _write_shards(
            store, pending, by_id, proposals.boxes, featurizer, config.dtype, stats, progress
        )
    store.close()
    proposals.close()
    return stats


def _write_shards(
    store: ShardedStore,
    pending: list[int],
    by_id: dict[str, ImageRecord],
    proposals: Callable[[str], np.ndarray],
    featurizer: RcnnFeaturizer,
    dtype: str,
    stats: RcnnStats,
    progress: bool,
) -> None:
    """Compute and write the PENDING shards, image after image: each image's ground-truth boxes
    and PROPOSALS, warped and pooled by FEATURIZER, stored as DTYPE; counts windows and time."""
    start = time.perf_counter()
    bars = progress_bar(stats.computed, "cache-features rcnn", "img") if progress else None
    with bars or nullcontext() as bar:

        def fill(writer: ShardWriter, image_ids: list[str]) -> None:
            for image_id in image_ids:
                record = by_id[image_id]
                boxes = image_windows_union(record, proposals(image_id))
                image = read_image(record.path)
                pool5 = featurizer.pool5(featurizer.prepare(image), boxes).cpu().numpy()
                writer.put(image_id, "boxes", boxes)
                writer.put(image_id, "pool5", pool5.astype(DTYPES[dtype]), "gzip")
                writer.set_image_attrs(image_id, height=image.shape[0], width=image.shape[1])
                stats.windows += len(boxes)
                if bar is not None:
                    bar.advance()
                    rate = stats.windows / max(time.perf_counter() - start, 1e-9)
                    bar.note(f"cache-features rcnn ({rate:.0f} windows/s)")

        for shard in pending:
            store.write_shard(shard, fill)
    stats.seconds = time.perf_counter() - start
