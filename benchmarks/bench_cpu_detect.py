"""CPU detection against the machine's limit (issue 20): every figure of BENCHMARKS.md's section
"CPU detection (issue 20)" in one command.

1. layers   zf5 layer by layer on the first image of --split, resized to 688 and to the 5
            released scales: milliseconds and GFLOP/s (2 per multiply-add, counted by torch's
            FlopCounterMode) of each layer, before (planar maps, the LRN's plain expression:
            the code before issue 20) and after (``trunk.to_device``: channels-last, the LRN in
            place), next to the GFLOP/s of the fc6 GEMM (2,000 windows x 12,800 -> 4,096) timed
            in the same run. Each figure is the fastest of --repeats runs.
2. bench    ``sppdet bench`` (SPP against R-CNN, one zf5 trunk, fc6/fc7 --fc-dim wide (4,096),
            2,000 windows per image) once per --fc-ranks entry (full, or R6xR7): detection
            without proposals at 1 and 5 scales, the speed-ups with their work ratios, their
            bounds (``bench.bounds``) and what bounds them. With --bf16 also once in bf16
            autocast at the first entry's ranks, with the score drift and the detections that
            stay the same (bf16 is never a default).
3. warp     R-CNN's warp of --windows windows of the first image (``bench_windows``, 16 px of
            context, 224 x 224, batches of ``RcnnConfig.batch_windows``): ``warp_windows``
            (grid_sample) against torchvision's ``roi_align``, which it replaced, in ms per
            window, the fastest of --repeats passes, and the largest difference.
4. map      (with --map-work WORK, repeatable) ``sppdet detect --fc-rank`` + ``sppdet
            evaluate`` of each trained work folder at each --map-ranks entry and each
            --map-fits fit (responses, weights), VOC07 mAP.

    python benchmarks/bench_cpu_detect.py --data ../shared/data/raccoon-voc \\
        --fc-ranks full,512x256,256x128 --bf16 --out /tmp/cpu_detect.json \\
        --map-work /tmp/racc --map-ranks full,256x128,128x64
    python benchmarks/bench_cpu_detect.py --data ../shared/data/raccoon-voc --parts bench \\
        --fc-dim 1024 --fc-ranks full,256x128,128x64 --out /tmp/cpu_detect_1024.json

On a shared machine the absolute times move with the load (``uptime`` is printed with each
part); ratios within one part are measured in the same run. There, ``--threads 1 --clock cpu``
times every part in CPU seconds of this process (``time.process_time``) on one core: what each
part costs, not how long it waited for the cores; the targets are wall-clock figures of a
quiet machine (the default ``--clock wall``, every core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

from sppdet.detector.backbones.trunk import build_trunk, to_device
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING, WithinChannelLRN
from sppdet.detector.bench import bench_windows, run_bench, spp_shares
from sppdet.detector.core.config import RELEASED_SCALES_5, SINGLE_SCALE, FeatureConfig, preset
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.features.conv5 import resize_to_scales
from sppdet.detector.features.rcnn_warp import context_boxes, warp_size, warp_windows

FC_WINDOWS, FC_IN, FC_OUT = 2000, 12800, 4096  # the fc6 GEMM of 2,000 windows, 4,096 wide
DETECT_TARGET_S = 0.6  # detect without proposals, 1 scale, 2,000 windows (issue 20)
CONV_TARGET = 0.6  # zf5's convolutions at >= 60% of the fc GEMM's GFLOP/s
CPU = torch.device("cpu")
RATIO_TARGET = 0.9  # each speed-up within 10% of its bound (bench.bounds)


def load() -> str:
    """The 1-minute load average, as ``uptime`` says it."""
    return f"{os.getloadavg()[0]:.2f}"


class PlainLRN(nn.Module):
    """The within-channel LRN as it was before issue 20: the plain expression (five fresh
    tensors, ``pow``)."""

    def __init__(self, lrn: WithinChannelLRN) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = lrn.size, lrn.alpha, lrn.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)


def trunk_before() -> nn.Module:
    """zf5 as before issue 20: planar maps, the LRN's plain expression, glibc's default of
    mapping every block above 32 MB afresh (``to_device`` changes that for the whole process:
    time this one first)."""
    before = build_trunk("zf5").eval()
    for name, module in list(before.features.named_children()):
        if isinstance(module, WithinChannelLRN):
            setattr(before.features, name, PlainLRN(module))
    return before


def layer_macs(trunk: nn.Module, height: int, width: int) -> dict[str, int]:
    """Multiply-adds per layer name of one pass over a HEIGHT x WIDTH image (meta device)."""
    meta = build_trunk("zf5").to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    counts = counter.get_flop_counts()
    return {
        name: int(sum(counts.get(f"Trunk.features.{name}", {}).values())) // 2
        for name, _ in trunk.features.named_children()
    }


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]  # set from --clock


def time_layers(trunk: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per layer (and ``total`` for the whole pass), the fastest of REPEATS passes."""
    best: dict[str, float] = {}
    starts: dict[str, float] = {}
    hooks = []
    for name, module in trunk.features.named_children():

        def before(_m: nn.Module, _i: Any, name: str = name) -> None:
            starts[name] = CLOCK()

        def after(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
            spent = CLOCK() - starts[name]
            best[name] = min(best.get(name, float("inf")), spent)

        hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    with torch.inference_mode():
        trunk(x)  # warm-up: oneDNN's kernel choice, the allocator
        best.clear()
        for _ in range(repeats):
            start = CLOCK()
            trunk(x)
            best["total"] = min(best.get("total", float("inf")), CLOCK() - start)
    for hook in hooks:
        hook.remove()
    return best


def fc_gemm(repeats: int) -> dict[str, float]:
    """GFLOP/s of fc6's GEMM (torch.nn.Linear, float32) over FC_WINDOWS windows."""
    layer = nn.Linear(FC_IN, FC_OUT)
    x = torch.randn(FC_WINDOWS, FC_IN)
    seconds = fastest(lambda: layer(x), repeats)
    return {"seconds": seconds, "gflops": 2e-9 * FC_WINDOWS * FC_IN * FC_OUT / seconds}


def fastest(call: Callable[[], Any], repeats: int) -> float:
    with torch.inference_mode():
        call()
        times = []
        for _ in range(repeats):
            start = CLOCK()
            call()
            times.append(CLOCK() - start)
    return min(times)


def profile_layers(rgb: Any, repeats: int) -> dict[str, Any]:
    """Part 1: per layer and setting (688, 5 scales), before and after, and the fc GEMM."""
    out: dict[str, Any] = {"load": load(), "fc_gemm": fc_gemm(repeats)}
    settings = {"688": SINGLE_SCALE, "5 scales": RELEASED_SCALES_5}
    inputs = {}
    for setting, scales in settings.items():
        images = resize_to_scales(rgb, scales, preset("released").features.max_size)
        inputs[setting] = [ZF5_PREPROCESSING(image, torch.device("cpu")) for image in images]
    for version in ("before", "after"):
        trunk = trunk_before() if version == "before" else to_device(build_trunk("zf5"), CPU)
        for setting, batch in inputs.items():
            per_scale = [time_layers(trunk, x, repeats) for x in batch]
            times = {k: sum(t[k] for t in per_scale) for k in per_scale[0]}
            out.setdefault(setting, {})[version] = times
    for setting, batch in inputs.items():
        macs: dict[str, int] = {}
        for x in batch:
            for name, count in layer_macs(trunk, *x.shape[-2:]).items():
                macs[name] = macs.get(name, 0) + count
        out[setting].update(sizes=[list(x.shape[-2:]) for x in batch], macs=macs)
    return out


def print_layers(result: dict[str, Any]) -> None:
    gemm = result["fc_gemm"]["gflops"]
    print(f"\n## zf5 layer by layer (load {result['load']}); fc6 GEMM {gemm:.1f} GFLOP/s\n")
    for setting in ("688", "5 scales"):
        part = result[setting]
        macs = part["macs"]
        print(f"{setting} ({' + '.join('x'.join(map(str, s)) for s in part['sizes'])}):\n")
        print("| layer | G multiply-adds | before ms | before GFLOP/s | after ms | after GFLOP/s |")
        print("|---|---|---|---|---|---|")
        for name in [*macs, "total"]:
            count = sum(macs.values()) if name == "total" else macs[name]
            cells = []
            for version in ("before", "after"):
                seconds = part[version][name]
                rate = f"{2e-9 * count / seconds:.1f}" if count else "-"
                cells += [f"{1e3 * seconds:.1f}", rate]
            g = f"{count / 1e9:.2f}" if count else "-"
            print(f"| {name} | {g} | {' | '.join(cells)} |")
        convs = [n for n, c in macs.items() if c]
        for version in ("before", "after"):
            conv_s = sum(part[version][n] for n in convs)
            conv_rate = 2e-9 * sum(macs.values()) / conv_s
            whole = 2e-9 * sum(macs.values()) / part[version]["total"]
            print(
                f"\n{version}: convolutions {conv_rate:.1f} GFLOP/s = "
                f"{100 * conv_rate / gemm:.0f}% of the fc GEMM (target >= "
                f"{100 * CONV_TARGET:.0f}%); whole trunk (LRN, pooling, ReLU included) "
                f"{whole:.1f} GFLOP/s = "
                f"{100 * whole / gemm:.0f}%"
            )
        print()


def warp_part(rgb: Any, windows: int, repeats: int) -> dict[str, Any]:
    """Part 3: R-CNN's warp, grid_sample (now) against roi_align (before), ms per window."""
    config = preset("released").rcnn
    size, padding, step = warp_size(config, "zf5"), config.context_padding, config.batch_windows
    image = ZF5_PREPROCESSING(rgb, CPU)
    boxes = bench_windows(np.zeros((0, 4)), windows, *rgb.shape[:2], seed=0)

    def by_roi_align(part: np.ndarray) -> torch.Tensor:
        enlarged = context_boxes(part, size, padding)
        rois = np.zeros((len(part), 5), np.float32)
        rois[:, 1:3], rois[:, 3:5] = enlarged[:, :2], enlarged[:, 2:] + 1.0
        return roi_align(image, torch.from_numpy(rois), (size, size), 1.0, 1, aligned=True)

    out: dict[str, Any] = {"load": load(), "windows": windows, "size": size}
    for name, warp in (
        ("roi_align", by_roi_align),
        ("grid_sample", lambda part: warp_windows(image, part, size, padding)),
    ):
        seconds = fastest(
            lambda w=warp: [w(boxes[k : k + step]) for k in range(0, windows, step)], repeats
        )
        out[name] = 1e3 * seconds / windows
    with torch.inference_mode():
        diff = (warp_windows(image, boxes[:step], size, padding) - by_roi_align(boxes[:step])).abs()
    out["max_abs_diff"] = float(diff.max())
    return out


def print_warp(result: dict[str, Any]) -> None:
    gain = result["roi_align"] / result["grid_sample"]
    print(
        f"\n## R-CNN's warp, {result['windows']} windows to {result['size']} px (load "
        f"{result['load']}): roi_align {result['roi_align']:.3f} ms/window, grid_sample "
        f"{result['grid_sample']:.3f} ms/window ({gain:.1f}x); "
        f"largest difference {result['max_abs_diff']:.3g} (pixel values 0-255 less the mean)"
    )


def parse_ranks(text: str) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for entry in text.split(","):
        if entry == "full":
            out.append(None)
        else:
            r6, r7 = entry.lower().split("x")
            out.append((int(r6), int(r7)))
    return out


def rank_name(ranks: tuple[int, int] | None) -> str:
    return "full" if ranks is None else f"{ranks[0]}x{ranks[1]}"


def benches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: ``run_bench`` per rank (and bf16 at the first ranks)."""
    cfg = preset("released")
    cfg = dataclasses.replace(
        cfg,
        bench=dataclasses.replace(cfg.bench, images=args.images, windows=args.windows),
        finetune=dataclasses.replace(cfg.finetune, fc_dim=args.fc_dim),
    )
    dataset = load_dataset(args.data, args.split)
    features = FeatureConfig(device="cpu")
    runs = [(ranks, "fp32") for ranks in parse_ranks(args.fc_ranks)]
    if args.bf16:
        runs.append((runs[0][0], "bf16"))
    out = []
    for ranks, precision in runs:
        start_load = load()
        report = run_bench(
            dataset, features, cfg, precision, progress=False, fc_rank=ranks, clock=CLOCK
        )
        extra = {"ranks": rank_name(ranks), "fc_dim": args.fc_dim, "load": f"{start_load}-{load()}"}
        out.append({**report.to_json(), **extra})
        print_bench(out[-1])
    return out


def print_bench(report: dict[str, Any]) -> None:
    per, macs, gflops = report["per_image"], report["macs"], report["gflops"]
    print(
        f"\n## bench: fc6/fc7 {report['ranks']} of {report['fc_dim']}, {report['precision']}, "
        f"{report['windows']} windows, {len(report['images'])} image(s), load {report['load']}\n"
    )
    print("| part | s/image | G multiply-adds | GFLOP/s |\n|---|---|---|---|")
    for part, seconds in per.items():
        g = f"{macs[part] / 1e9:.2f}" if macs[part] else "-"
        rate = f"{gflops[part]:.1f}" if part in gflops else "-"
        print(f"| {part} | {seconds:.4f} | {g} | {rate} |")
    detect = report["detect"]["1"]
    verdict = "met" if detect <= DETECT_TARGET_S else "missed"
    print(
        f"\ndetect without proposals: 1 scale {detect:.3f} s/image (target <= "
        f"{DETECT_TARGET_S} s: {verdict}), 5 scales {report['detect']['5']:.3f} s/image"
    )
    for key, speed in report["speedup"].items():
        work, bound = report["work_ratio"][key], report["bound"][key]
        within = abs(speed / bound - 1) <= 1 - RATIO_TARGET
        side, tag, _ = key.rsplit("_", 2)
        shares = spp_shares(per, side, tag)
        top = max(shares, key=lambda part: shares[part])
        print(
            f"- {key}: {speed:.1f}x faster, {work:.1f}x fewer multiply-adds, bound {bound:.1f}x "
            f"at SPP's measured GFLOP/s (speed-up / bound {speed / bound:.2f}: "
            f"{'within' if within else 'NOT within'} 10%); bound by {top}, "
            f"{100 * shares[top]:.0f}% of SPP's time"
        )
    if report["check"] is not None:
        check = report["check"]
        print(
            f"- {report['precision']} against fp32: scores move by <= "
            f"{check['spp_max_abs_score_diff']:.4g} (score std {check['score_std']:.3g}); "
            f"{100 * check['same_detections']:.1f}% of the detections the same"
        )


def map_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 3: VOC07 mAP of each --map-work folder at each --map-ranks entry."""
    out = []
    scratch = Path(tempfile.mkdtemp(prefix="cpu_detect_"))
    cli = [sys.executable, "-c", "from sppdet.cli.main import main; main()"]
    runs = [
        (work, ranks, fit)
        for work in args.map_work
        for ranks in parse_ranks(args.map_ranks)
        for fit in (["full"] if ranks is None else args.map_fits.split(","))
    ]
    for work, ranks, fit in runs:
        name = f"{Path(work).name}_{rank_name(ranks)}_{fit}"
        det = scratch / name
        detect = [*cli, "detect", "--data", args.data, "--split", args.split, "--work", work]
        detect += ["--out", str(det), "--force"]
        if ranks is not None:
            detect += ["--fc-rank", f"{ranks[0]},{ranks[1]}", "--fc-rank-fit", fit]
        start = time.perf_counter()
        subprocess.run(detect, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        report = scratch / f"{name}.json"
        evaluate = [*cli, "evaluate", "--data", args.data, "--split", args.split]
        evaluate += ["--detections", str(det), "--report", str(report)]
        subprocess.run(evaluate, check=True, capture_output=True)
        found = json.loads(report.read_text())["map"]
        row = {
            "work": work,
            "fc_rank": rank_name(ranks),
            "fit": fit,
            "map": found,
            "detect_s": seconds,
        }
        print(
            f"- {work} {rank_name(ranks)} ({fit}): mAP {100 * found:.2f} (detect stage "
            f"{seconds:.0f} s, load {load()})"
        )
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=1, help="images timed by the bench")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--fc-ranks", default="full,512x256", help="full or R6xR7, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fc-dim", type=int, default=FC_OUT, help="the bench head's width")
    parser.add_argument("--bf16", action="store_true", help="also bench bf16 autocast")
    parser.add_argument("--parts", default="layers,bench,warp,map")
    parser.add_argument("--map-work", action="append", default=[])
    parser.add_argument("--map-ranks", default="full,512x256,256x128")
    parser.add_argument("--map-fits", default="responses,weights", help="--fc-rank-fit values")
    parser.add_argument("--out", type=Path, default=Path("cpu_detect.json"))
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.clock} clock, load {load()}")
    result: dict[str, Any] = {"threads": threads, "clock": args.clock}
    if "layers" in parts:
        dataset = load_dataset(args.data, args.split)
        result["layers"] = profile_layers(read_image(dataset.records[0].path), args.repeats)
        print_layers(result["layers"])
    if "bench" in parts:
        result["bench"] = benches(args)
    if "warp" in parts:
        dataset = load_dataset(args.data, args.split)
        rgb = read_image(dataset.records[0].path)
        result["warp"] = warp_part(rgb, args.windows, args.repeats)
        print_warp(result["warp"])
    if "map" in parts and args.map_work:
        print("\n## mAP per rank\n")
        result["map"] = map_sweep(args)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
