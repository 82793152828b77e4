"""``sppdet synth``: a synthetic VOC dataset of coloured shapes, for tests and the demo."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sppdet.cli.app import app


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (the VOC root)."),
    images: int = typer.Option(
        100, "--num-images", min=2, help="Number of images (half go to test)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: equal seeds give equal datasets."),
    with_detections: bool = typer.Option(
        False,
        "--with-detections",
        help="EVALUATOR EXERCISE, not a detector: also write stand-in detections of the test "
        "split (jittered ground truth, duplicates, wrong labels, random false positives) as VOC "
        "results files in OUT/results/ and a COCO results JSON, to try 'sppdet evaluate' on.",
    ),
) -> None:
    """Generate a synthetic PASCAL VOC tree: coloured shapes (circle, square, triangle) on
    textured backgrounds, with occlusion and difficult objects."""
    from sppdet.detector.evaluation.synthetic import make_synthetic_demo

    demo = make_synthetic_demo(out, num_images=images, seed=seed, with_detections=with_detections)
    sizes = ", ".join(f"{name} {n}" for name, n in demo.split_sizes.items())
    print(f"wrote {demo.root}: {sizes} images; {demo.objects} objects ({demo.difficult} difficult)")
    if demo.results_dir is not None:
        print(f"wrote stand-in detections (evaluator exercise) to {demo.results_dir}")
        print(
            f"next: sppdet evaluate --voc2007 --data {demo.root} --split test "
            f"--detections {demo.results_dir}",
            file=sys.stderr,
        )
