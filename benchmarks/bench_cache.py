"""Feature caching: seconds per image (forward vs caching overhead) and bytes per image.

For each scale set (1-scale 688 and the released 5-scale set by default) on the first --images
images of a VOC split:

1. ``cache-features`` once to warm up (oneDNN builds its convolution primitives per input
   shape; the first pass over new sizes pays for that) -- reported as "cold";
2. the bare forward passes alone (images decoded and resized beforehand, maps discarded);
3. ``cache-features`` again into an emptied store: decode, resize, forward, float16
   conversion, compression and writing, with loader and writer threads.
Overhead = (3) / (2) - 1, the target being <= 15%.

Bytes per image: the maps of (2) written through the sharded store as float16 and float32,
with gzip, lzf and no compression, against the raw float32 size (target: float16 cache
<= 40% of float32). Post-ReLU sparsity with random weights differs from trained weights, so
sizes with ImageNet/pretrained weights will differ.

    python benchmarks/bench_cache.py --data /work/shared/data/raccoon-voc --images 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import RELEASED_SCALES_5, FeatureConfig
from sppdet.detector.core.device import resolve_device
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.features.conv5 import compute_conv5, load_resized
from sppdet.detector.features.writer import cache_features


def bare_forward(records, config: FeatureConfig) -> tuple[float, list[list[np.ndarray]]]:
    backbone = load_backbone(config.backbone, config.weights)
    device = resolve_device(config.device)
    trunk = backbone.trunk.to(device).eval()
    loaded = [load_resized(r, config.scales, config.max_size) for r in records]
    dtype = torch.float32
    seconds, maps = 0.0, []
    for image in loaded:
        start = time.perf_counter()
        out = compute_conv5(
            trunk, backbone.preprocessing, image.resized, device, config.flip, dtype
        )
        seconds += time.perf_counter() - start
        maps.append([m.numpy() for _, m in out])
    return seconds, maps


def stored_bytes(maps: list[list[np.ndarray]], dtype: str, compression: str | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ids = [f"im{i}" for i in range(len(maps))]
        store = ShardedStore.create(tmp, "bench", {"dtype": dtype}, ids, shard_size=len(ids))

        def fill(writer, image_ids):  # type: ignore[no-untyped-def]
            for image_id, image_maps in zip(image_ids, maps, strict=True):
                for k, m in enumerate(image_maps):
                    writer.put(image_id, f"conv5_s{k}", m.astype(dtype), compression=compression)

        store.write_shard(0, fill)
        return store.total_bytes()


def run_scale_set(dataset: Dataset, config: FeatureConfig, work: Path) -> dict:
    n = len(dataset)
    cold = cache_features(dataset, work, config, progress=False)
    forward, maps = bare_forward(dataset.records, config)
    shutil.rmtree(cold.root)  # same settings would resume (nothing to do): start afresh
    warm = cache_features(dataset, work, config, progress=False)
    raw32 = sum(m.size * 4 for image in maps for m in image)
    sizes = {
        f"{dtype}+{compression or 'none'}": stored_bytes(maps, dtype, compression) / n
        for dtype in ("float16", "float32")
        for compression in ("gzip", "lzf", None)
    }
    zeros = float(np.mean([np.mean(m == 0) for image in maps for m in image]))
    return {
        "scales": list(config.scales),
        "images": n,
        "s_per_image": {
            "bare_forward": forward / n,
            "caching_wall": warm.wall / n,
            "caching_wall_cold": cold.wall / n,
            "caching_forward": warm.forward / n,
            "caching_wait_load": warm.wait_load / n,
            "caching_wait_write": warm.wait_write / n,
            "loader_threads_decode_resize": warm.decode / n,
            "writer_thread_compress_write": warm.write / n,
        },
        "overhead_vs_bare_forward": warm.wall / forward - 1,
        "bytes_per_image": {
            "float32_raw": raw32 / n,
            **sizes,
            "cache_as_written": warm.bytes_total / n,
        },
        "float16_gzip_vs_float32_raw": sizes["float16+gzip"] * n / raw32,
        "zero_fraction": zeros,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/raccoon-voc")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--backbone", default="zf5")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--scale-sets", default="688;" + ",".join(map(str, RELEASED_SCALES_5)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="bench_cache.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_dataset(args.data, args.split)
    dataset = Dataset(full.name, full.split, full.classes, full.records[: args.images])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in enumerate(args.scale_sets.split(";")):
            scales = tuple(int(s) for s in text.split(","))
            config = FeatureConfig(
                backbone=args.backbone, weights=args.weights, scales=scales, device=args.device
            )
            results.append(run_scale_set(dataset, config, Path(tmp) / f"w{k}"))
    report = {
        "benchmark": "bench_cache",
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "backbone": args.backbone,
        "weights": args.weights,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.backbone} ({args.weights} weights), {args.images} images of {args.split}, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    header = f"{'scales':>26} {'bare fwd s/img':>14} {'caching s/img':>14} {'overhead':>9} "
    print(header + f"{'fp16 MiB/img':>12} {'fp32 raw MiB':>12} {'ratio':>6} {'zeros':>6}")
    for r in results:
        t, b = r["s_per_image"], r["bytes_per_image"]
        print(
            f"{','.join(map(str, r['scales'])):>26} {t['bare_forward']:>14.3f} "
            f"{t['caching_wall']:>14.3f} {100 * r['overhead_vs_bare_forward']:>8.1f}% "
            f"{b['float16+gzip'] / 2**20:>12.2f} {b['float32_raw'] / 2**20:>12.2f} "
            f"{r['float16_gzip_vs_float32_raw']:>6.2f} {r['zero_fraction']:>6.2f}"
        )
    for r in results:
        sizes = ", ".join(
            f"{k} {v / 2**20:.2f}" for k, v in r["bytes_per_image"].items() if "+" in k
        )
        print(f"  {','.join(map(str, r['scales']))}: MiB/img {sizes}")
        t = r["s_per_image"]
        print(
            f"  inside caching (s/img): forward {t['caching_forward']:.3f}, waiting for images "
            f"{t['caching_wait_load']:.3f}, waiting for the writer {t['caching_wait_write']:.3f}; "
            f"threads: decode+resize {t['loader_threads_decode_resize']:.3f}, compress+write "
            f"{t['writer_thread_compress_write']:.3f}; cold run {t['caching_wall_cold']:.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
