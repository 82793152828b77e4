"""Window pooling throughput: 2,000 windows per image, each at its best of 5 scales.

Builds a 5-scale conv5 cache of the first --images images (zf5, random weights) unless --work
points at an existing one, draws --windows random windows per image (log-uniform sides from
16 px to the image, aspect ratios 1/3..3, seeded), and times per image:

  cold      FeatureCache.pooled on a fresh cache object: HDF5 read + decompression + pooling
  warm      the same call again (maps in memory): the pooling itself, float32 result; as in
            the pipeline, the memory of an earlier result that the caller dropped is reused
  fresh     with a brand-new output tensor each call: adds the page faults of 100 MB
  warm+out  with a reused output buffer passed as `out`
  fp16+out  float16 result (exact: max pooling selects stored float16 values)
  torch     the pooler's torch path (sparse tables), maps in memory, reused float32 output:
            what runs where the compiled kernel is not built (the columns above use it when
            it is; see "kernel" in the output)
  roi_pool  torchvision.ops.roi_pool per scale group (float32), for comparison
  loop      a Python loop over windows: crop, adaptive max pool per level, concatenate

Targets: warm <= 50 ms per image on the 2-core CPU, and >= 20x faster than the loop. Times are
medians over --repeats calls; on a shared or virtual machine, run it when idle (see `uptime`).

    python benchmarks/bench_pooling.py --data /work/shared/data/raccoon-voc --images 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from sppdet.detector.core.config import RELEASED_SCALES_5, FeatureConfig
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.spp import native as spp_native
from sppdet.detector.spp.pooler import WindowPooler, window_spp_roi_pool


def random_windows(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(16), np.log(min(height, width)), n))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    w = np.clip(side * np.sqrt(aspect), 4, width)
    h = np.clip(side / np.sqrt(aspect), 4, height)
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.floor(np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1))


def loop_pool(
    maps: list[torch.Tensor], cells: np.ndarray, scales: np.ndarray, pyramid
) -> torch.Tensor:
    rows = []
    for (x1, y1, x2, y2), k in zip(cells.tolist(), scales.tolist(), strict=True):
        crop = maps[k][:, y1 : y2 + 1, x1 : x2 + 1].float()
        rows.append(torch.cat([F.adaptive_max_pool2d(crop, n).flatten() for n in pyramid]))
    return torch.stack(rows)


def roi_pool_grouped(maps, cells, scales, pyramid, dim) -> torch.Tensor:
    out = torch.empty(len(cells), dim)
    for k in np.unique(scales):
        rows = torch.from_numpy(np.nonzero(scales == k)[0])
        out[rows] = window_spp_roi_pool(maps[k], cells[rows.numpy()], pyramid)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def measure_image(cache: FeatureCache, image_id: str, boxes: np.ndarray, repeats: int) -> dict:
    """Milliseconds of every pooling variant for one image's windows (see the module doc)."""
    info = cache.image_info(image_id)
    start = time.perf_counter()
    cache.pooled(image_id, boxes)  # a fresh FeatureCache: reads and decompresses the maps
    cold = time.perf_counter() - start
    warm, fast = timed(lambda: cache.pooled(image_id, boxes), repeats)
    fresh, _ = timed(
        lambda: cache.pooled(image_id, boxes, out=torch.empty(len(boxes), cache.dim)), repeats
    )
    out = torch.empty(len(boxes), cache.dim)
    warm_out, _ = timed(lambda: cache.pooled(image_id, boxes, out=out), repeats)
    out16 = torch.empty(len(boxes), cache.dim, dtype=torch.float16)
    fp16, _ = timed(lambda: cache.pooled(image_id, boxes, out=out16), repeats)
    scales = cache.best_scale(image_id, boxes)
    cells = cache.cells(image_id, boxes, scales)
    maps = [cache.conv5(image_id, k) for k in range(cache.num_scales)]
    tables = WindowPooler(kernel="torch")
    torch_path, by_tables = timed(
        lambda: tables.pool(maps, cells, cache.pyramid, map_index=scales, out=out), repeats
    )
    assert torch.equal(by_tables, fast), "the torch path disagrees with the default path"
    roi, _ = timed(lambda: roi_pool_grouped(maps, cells, scales, cache.pyramid, cache.dim), 2)
    loop, slow = timed(lambda: loop_pool(maps, cells, scales, cache.pyramid), 1)
    assert torch.equal(fast, slow), "fast pooling disagrees with the loop"
    return {
        "image": image_id,
        "size": [info.height, info.width],
        "windows_per_scale": np.bincount(scales, minlength=cache.num_scales).tolist(),
        "ms": {
            "cold": 1e3 * cold,
            "warm": 1e3 * warm,
            "fresh": 1e3 * fresh,
            "warm+out": 1e3 * warm_out,
            "fp16+out": 1e3 * fp16,
            "torch": 1e3 * torch_path,
            "roi_pool": 1e3 * roi,
            "loop": 1e3 * loop,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/raccoon-voc")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--work", default=None, help="existing work folder with a 5-scale cache")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="bench_pooling.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    work = args.work
    if work is None:
        work = tmp.name
        full = load_dataset(args.data, args.split)
        subset = Dataset(full.name, full.split, full.classes, full.records[: args.images])
        config = FeatureConfig(scales=RELEASED_SCALES_5, device="cpu")
        cache_features(subset, work, config, progress=False)
    rng = np.random.default_rng(0)
    probe = FeatureCache.open(work, args.split)
    image_ids = probe.image_ids[: args.images]
    probe.close()
    rows = []
    for image_id in image_ids:
        cache = FeatureCache.open(work, args.split)
        info = cache.image_info(image_id)
        boxes = random_windows(rng, args.windows, info.height, info.width)
        rows.append(measure_image(cache, image_id, boxes, args.repeats))
        cache.close()
    tmp.cleanup()
    keys = list(rows[0]["ms"])
    mean = {k: float(np.mean([r["ms"][k] for r in rows])) for k in keys}
    report = {
        "benchmark": "bench_pooling",
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "kernel": "native" if spp_native.built() else "torch",
        "windows_per_image": args.windows,
        "scales": list(RELEASED_SCALES_5),
        "images": rows,
        "mean_ms": mean,
        "speedup_warm_vs_loop": mean["loop"] / mean["warm"],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{args.windows} windows/image at their best of 5 scales, {len(rows)} images, torch "
        f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, pooling kernel "
        f"{report['kernel']}"
    )
    print("ms/image  " + "  ".join(f"{k:>9}" for k in keys))
    for r in rows:
        print(f"{r['image'][:8]:>8}  " + "  ".join(f"{r['ms'][k]:>9.1f}" for k in keys))
    print(f"{'mean':>8}  " + "  ".join(f"{mean[k]:>9.1f}" for k in keys))
    speedup = report["speedup_warm_vs_loop"]
    print(f"warm pooling is {speedup:.0f}x faster than the loop; wrote {args.out}")


if __name__ == "__main__":
    main()
