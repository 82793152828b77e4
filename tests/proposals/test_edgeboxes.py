"""Tests of ``sppdet.proposals.edgeboxes``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.edgeboxes import edge_boxes, edge_boxes_raw
from sppdet.proposals.edges import builtin_edge_maps
from sppdet.proposals.structured_edges import structured_edge_maps
from tests.proposals.shared import SCENE


def test_edgeboxes_box_convention_and_objects(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="edgeboxes")
    edges, orientation = builtin_edge_maps(scene, cfg)
    raw, scores = edge_boxes_raw(edges, orientation, cfg)
    assert np.all(np.diff(scores) <= 0)
    boxes = edge_boxes(scene, cfg)
    # the full-resolution scene is below eb_max_side: boxes are the raw ones, filtered
    kept = {tuple(b) for b in raw[(raw[:, 2] - raw[:, 0] >= 19) & (raw[:, 3] - raw[:, 1] >= 19)]}
    assert {tuple(b) for b in boxes} <= kept
    assert iou_matrix(np.array(SCENE), boxes[:10]).max(axis=1).min() >= 0.7


# -------------------------------------------------------------------- structured-edge model

TINY_MODEL = """%YAML:1.0
options:
   stride: 2
   shrinkNumber: 2
   patchSize: 32
   patchInnerSize: 16
   numberOfGradientOrientations: 4
   gradientSmoothingRadius: 0
   regFeatureSmoothingRadius: 2
   ssFeatureSmoothingRadius: 8
   gradientNormalizationRadius: 4
   selfsimilarityGridSize: 5
   numberOfTrees: 1
   numberOfTreesToEvaluate: 1
childs:
   - [ 0 ]
featureIds:
   - [ 0 ]
thresholds:
   - [ 0. ]
edgeBoundaries:
   - [ 0, 16 ]
edgeBins:
   - [ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 ]
"""


def test_a_structured_edge_model_drives_edgeboxes(tmp_path: Path, scene: np.ndarray) -> None:
    # A one-leaf forest that paints the first row of every patch: tests the plumbing only.
    model = tmp_path / "tiny.yml"
    model.write_text(TINY_MODEL)
    edges, orientation = structured_edge_maps(scene, model)
    assert edges.shape == scene.shape[:2] and edges.max() > 0
    assert orientation.min() >= 0 and orientation.max() <= np.pi + 1e-6
    boxes = edge_boxes(scene, ProposalConfig(method="edgeboxes"), model)
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    np.testing.assert_array_equal(
        boxes, edge_boxes(scene, ProposalConfig(method="edgeboxes"), model)
    )
