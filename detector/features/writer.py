"""The conv5 cache writer: conv5 maps of every image at every scale, run once, stored compactly.

The maps of one image are computed by ``sppdet.detector.features.conv5`` (resizing, the size cap
and the effective scale are described there) and read back, pooled, by
``sppdet.detector.features.reader.FeatureCache``.

Storage: a ``ShardedStore`` (kind ``features``) in ``WORK/features/<split>``; per image the
datasets ``conv5_s<k>`` (and ``conv5_s<k>_flip``), one chunk each, byte-shuffled and compressed
(post-ReLU conv5 maps are sparse and float16 bytes shuffle well), and image attributes: height,
width, effective_scales, map_heights, map_widths. The store's settings (the fingerprint) cover
the backbone, the weights' identity (file hash), the preprocessing, the scales, max size, dtype
and flip; a store made with other settings is refused unless --force.

Pipeline: loader threads decode and resize the next images while the forward passes run, and a
writer thread compresses and writes the finished maps, so the network never waits on image
decoding or the disk (on a GPU; on a 2-core CPU the threads share the cores with the forward
passes, which is the overhead the benchmark measures). Each shard appears atomically: a killed
run leaves no shard a later stage would read as valid, and a rerun computes only missing shards.

With ``--executor ray`` each pending shard is instead one task (``feature_shard``, one GPU each
when the cluster has GPUs) that loads the backbone once per worker process and writes its shard
through the same ``write_shard``; the stored maps are the same.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.atomic import remove_stale_temporaries
from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import Trunk, to_device, trunk_spec
from sppdet.detector.backbones.weights import (
    Backbone,
    describe_weights,
    load_backbone,
    weights_kind,
)
from sppdet.detector.core.config import FeatureConfig, SppConfig, as_dict
from sppdet.detector.core.device import check_precision, resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor, map_shards
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.features.conv5 import DTYPES, ImageMaps, LoadedImage, compute_conv5, prefetch
from sppdet.detector.spp.geometry import layer_geometry

log = logging.getLogger(__name__)

KIND = "features"


STAGE = "cache-features"  # its entry in settings.json


MADE_BY = "sppdet cache-features"


def random_weights_warning(stage: str) -> str:
    """The one line a STAGE running on a trunk with random weights logs (and ``run`` repeats)."""
    return (
        f"{stage} runs on random weights (--weights random, the default): the features come from "
        "an untrained network; for real images pass --weights imagenet or --weights PATH"
    )


LAYOUT_VERSION = 1


COMPRESSION = "gzip"  # with HDF5's byte shuffle; see benchmarks/bench_cache.py for lzf vs gzip


_QUEUE_IMAGES = 3  # finished images waiting for the writer (bounds memory)


_ABORT = object()


def check_config(config: FeatureConfig) -> None:
    if config.dtype not in DTYPES:
        raise SppdetError(f"--dtype {config.dtype!r}: choose float16 or float32")
    if not config.scales or min(config.scales) < 1:
        raise SppdetError(f"--scales {config.scales}: give positive pixel sizes, e.g. 480,688")
    if config.max_size is not None and config.max_size < 1:
        raise SppdetError(f"--max-size {config.max_size}: must be positive")
    check_precision(config.precision)


def feature_params(config: FeatureConfig) -> dict[str, Any]:
    """The settings that define a feature cache's content: its fingerprint covers exactly these."""
    check_config(config)
    weights_id, pre = describe_weights(config.backbone, config.weights)
    channels, layers = trunk_spec(config.backbone)
    geometry = layer_geometry(layers)
    return {
        "layout": LAYOUT_VERSION,
        "backbone": config.backbone,
        "weights": weights_id,
        "preprocessing": pre.to_dict(),
        "channels": channels,
        "geometry": geometry.to_dict(),
        "scales": [int(s) for s in config.scales],
        "max_size": int(config.max_size) if config.max_size else None,
        "dtype": config.dtype,
        "flip": bool(config.flip),
        "precision": config.precision,
    }


class _Writer(threading.Thread):
    """Writes the pending shards one after another, taking finished images from a queue."""

    def __init__(self, store: ShardedStore, shards: Sequence[int], compression: str | None):
        super().__init__(name="sppdet-feature-writer", daemon=True)
        self.store, self.shards, self.compression = store, list(shards), compression
        self.items: queue.Queue = queue.Queue(maxsize=_QUEUE_IMAGES)
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        try:
            for shard in self.shards:
                self.store.write_shard(shard, self._fill)
        except BaseException as exc:  # reported to the main thread, which re-raises
            self.error = exc

    def _fill(self, writer: ShardWriter, image_ids: list[str]) -> None:
        for image_id in image_ids:
            item = self.items.get()
            if item is _ABORT:
                raise _Aborted()
            start = time.perf_counter()
            assert item.image_id == image_id, (item.image_id, image_id)
            _put_image(writer, item, self.compression)
            self.seconds += time.perf_counter() - start

    def submit(self, item: ImageMaps) -> float:
        """Queue ITEM; returns the seconds spent waiting for room. Raises the writer's error."""
        start = time.perf_counter()
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.items.put(item, timeout=0.2)
                return time.perf_counter() - start
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError("feature writer thread stopped") from self.error

    def abort(self) -> None:
        """Make the writer drop the shard in progress (its temporary file is deleted)."""
        while self.is_alive():
            try:
                self.items.put(_ABORT, timeout=0.2)
                break
            except queue.Full:
                try:
                    self.items.get_nowait()
                except queue.Empty:
                    pass
        self.join()


class _Aborted(Exception):
    pass


@dataclass
class CacheStats:
    """What a cache-features run did, with where its time went (seconds)."""

    root: Path
    fingerprint: str
    images: int
    computed: int
    scales: tuple[int, ...]
    bytes_total: int = 0
    wall: float = 0.0
    forward: float = 0.0  # preprocessing + conv passes + device->host copy (main thread)
    wait_load: float = 0.0  # main thread waiting for a decoded image
    wait_write: float = 0.0  # main thread waiting for room in the writer queue
    decode: float = 0.0  # decode + resize time in the loader threads
    write: float = 0.0  # compression + write time in the writer thread
    extra: dict[str, Any] = field(default_factory=dict)


def detection_config(work: WorkDir, split: str, config: FeatureConfig) -> FeatureConfig:
    """CONFIG for a split that is only detected on: without the mirrored maps, which fine-tuning
    alone reads (half the trunk's passes and of the disk), unless WORK's cache of SPLIT was made
    with them and otherwise these settings: then it is kept as it is, not rebuilt."""
    flipped = dataclasses.replace(config, flip=True)
    recorded = (work.recorded(STAGE, split) or {}).get("store")
    if recorded is not None and fingerprint(recorded) == fingerprint(feature_params(flipped)):
        return flipped
    return dataclasses.replace(config, flip=False)


def cache_features(
    dataset: Dataset,
    work: WorkDir | str | Path,
    config: FeatureConfig,
    spp: SppConfig | None = None,
    force: bool = False,
    progress: bool = True,
    loader_threads: int = 2,
    compression: str | None = COMPRESSION,
    executor: Executor | None = None,
) -> CacheStats:
    """Build (or resume) the conv5 cache of DATASET's split in WORK; returns what it did.

    The local executor (default) runs here, with loader and writer threads; ``executor.kind ==
    "ray"`` runs one ``feature_shard`` task per pending shard on a Ray cluster instead.
    """
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    params = feature_params(config)
    if weights_kind(config.weights) == "random":
        log.warning(random_weights_warning(STAGE))
    ids = [r.image_id for r in dataset.records]
    root = work.features(dataset.split)
    store = ShardedStore.create(root, KIND, params, ids, config.shard_size, force=force)
    work.record(
        STAGE,
        dataset.split,
        {"features": as_dict(config), "spp": as_dict(spp or SppConfig()), "store": params},
    )
    shards = store.pending_shards()
    by_id = dataset.by_id()
    records = [by_id[i] for k in shards for i in store.shard_image_ids(k)]
    stats = CacheStats(root, store.meta.fingerprint, len(ids), len(records), tuple(config.scales))
    if records and executor is not None and executor.kind == "ray":
        store.close()
        _run_tasks(root, shards, by_id, config, stats, progress, compression, executor)
    elif records:
        device = resolve_device(config.device)
        backbone = load_backbone(config.backbone, config.weights)
        trunk = to_device(backbone.trunk, device)
        _run(store, shards, records, trunk, backbone.preprocessing, config, device, stats,
             progress, loader_threads, compression)  # fmt: skip
    stats.bytes_total = store.total_bytes()
    store.close()
    return stats


def _run(
    store: ShardedStore,
    shards: list[int],
    records: list[ImageRecord],
    trunk: Trunk,
    pre: Preprocessing,
    config: FeatureConfig,
    device: torch.device,
    stats: CacheStats,
    progress: bool,
    loader_threads: int,
    compression: str | None,
) -> None:
    dtype = DTYPES[config.dtype]
    start = time.perf_counter()
    writer = _Writer(store, shards, compression)
    writer.start()
    pool = ThreadPoolExecutor(max_workers=max(1, loader_threads), thread_name_prefix="sppdet-load")
    bars = progress_bar(len(records), "cache-features", "img") if progress else nullcontext()
    try:
        with bars as bar:
            loads = prefetch(pool, records, config.scales, config.max_size, 2 * loader_threads)
            for future in loads:
                t0 = time.perf_counter()
                loaded = future.result()
                t1 = time.perf_counter()
                maps = compute_conv5(
                    trunk, pre, loaded.resized, device, config.flip, dtype, config.precision
                )
                stats.wait_load += t1 - t0
                stats.forward += time.perf_counter() - t1
                stats.decode += loaded.seconds
                stats.wait_write += writer.submit(_image_maps(loaded, maps))
                if bar is not None:
                    bar.advance()
            writer.join()
        if writer.error is not None:
            raise writer.error
    except BaseException:
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        stats.write = writer.seconds
        stats.wall = time.perf_counter() - start


def _image_maps(loaded: LoadedImage, maps: list[tuple[str, torch.Tensor]]) -> ImageMaps:
    arrays = [(name, m.numpy()) for name, m in maps]
    plain = [a for name, a in arrays if not name.endswith("_flip")]
    attrs = {
        "height": loaded.height,
        "width": loaded.width,
        "effective_scales": np.array([min(r.shape[:2]) for r in loaded.resized], np.int64),
        "map_heights": np.array([a.shape[1] for a in plain], np.int64),
        "map_widths": np.array([a.shape[2] for a in plain], np.int64),
    }
    return ImageMaps(loaded.image_id, arrays, attrs)


def _put_image(writer: ShardWriter, item: ImageMaps, compression: str | None) -> None:
    for name, array in item.maps:
        writer.put(item.image_id, name, array, compression=compression)
    writer.set_image_attrs(item.image_id, **item.attrs)


@dataclass
class ShardTimes:
    """What one ``feature_shard`` task did (seconds; picklable, small)."""

    images: int = 0
    forward: float = 0.0
    decode: float = 0.0
    write: float = 0.0


# Per worker process: the trunk of the last settings used, so a worker loads it once per run.
_worker_trunk: tuple[tuple[str, ...], Trunk, Preprocessing, torch.device] | None = None


def _trunk_for(config: FeatureConfig, weights_id: str) -> tuple[Trunk, Preprocessing, torch.device]:
    global _worker_trunk
    key = (config.backbone, str(config.weights), weights_id, config.device)
    if _worker_trunk is None or _worker_trunk[0] != key:
        _worker_trunk = None  # free the previous trunk before building the next
        device = resolve_device(config.device)
        backbone: Backbone = load_backbone(config.backbone, config.weights)
        if backbone.weights_id != weights_id:  # e.g. another file at the same path on this node
            raise SppdetError(
                f"{config.weights}: these weights ({backbone.weights_id}) are not the ones the "
                f"cache was started with ({weights_id}); give every node the same file"
            )
        _worker_trunk = (key, to_device(backbone.trunk, device), backbone.preprocessing, device)
    return _worker_trunk[1], _worker_trunk[2], _worker_trunk[3]


def feature_shard(root: str, shard: int, settings: dict[str, Any]) -> ShardTimes:
    """Compute and write shard SHARD of the feature store at ROOT (a ``map_shards`` task).

    SETTINGS: ``config`` (FeatureConfig), ``records`` (image id -> ImageRecord), ``compression``.
    One loader thread decodes the next image while the trunk runs on the current one.
    """
    config: FeatureConfig = settings["config"]
    store = ShardedStore.open(root, KIND, made_by=MADE_BY, require_complete=False)
    trunk, pre, device = _trunk_for(config, store.meta.params["weights"])
    dtype = DTYPES[config.dtype]
    times = ShardTimes()

    def fill(writer: ShardWriter, image_ids: list[str]) -> None:
        records = [settings["records"][i] for i in image_ids]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sppdet-load") as pool:
            for future in prefetch(pool, records, config.scales, config.max_size, 1):
                loaded = future.result()
                t0 = time.perf_counter()
                maps = compute_conv5(
                    trunk, pre, loaded.resized, device, config.flip, dtype, config.precision
                )
                t1 = time.perf_counter()
                _put_image(writer, _image_maps(loaded, maps), settings["compression"])
                times.images += 1
                times.decode += loaded.seconds
                times.forward += t1 - t0
                times.write += time.perf_counter() - t1

    try:
        store.write_shard(shard, fill)
    finally:
        store.close()
    return times


def _run_tasks(
    root: Path,
    shards: list[int],
    by_id: dict[str, ImageRecord],
    config: FeatureConfig,
    stats: CacheStats,
    progress: bool,
    compression: str | None,
    executor: Executor,
) -> None:
    if weights_kind(config.weights) == "file":  # absolute: the workers' folder is not ours
        config = dataclasses.replace(config, weights=str(Path(config.weights).absolute()))
    records = {
        image_id: dataclasses.replace(by_id[image_id], path=Path(by_id[image_id].path).absolute())
        for image_id in by_id
    }
    settings = {"config": config, "records": records, "compression": compression}
    start = time.perf_counter()
    bars = progress_bar(stats.computed, "cache-features", "img") if progress else nullcontext()
    try:
        with bars as bar:
            tasks = map_shards(
                feature_shard, str(root), shards, settings, executor=executor,
                gpu=config.device != "cpu", sweep=remove_stale_temporaries
            )  # fmt: skip
            for _, times in tasks:
                stats.forward += times.forward
                stats.decode += times.decode
                stats.write += times.write
                if bar is not None:
                    bar.advance(times.images)
    finally:
        stats.wall = time.perf_counter() - start
