"""Tests of ``sppdet.proposals.methods``: the method table, lookup, dispatch and fingerprints."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import ProposalConfig
from sppdet.detector.core.errors import NO_XIMGPROC, SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.proposals.combined import selective_search_and_edge_boxes
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.methods import (
    METHODS,
    ProposalMethod,
    edge_methods,
    method_params,
    proposal_method,
    propose,
)
from sppdet.proposals.ranking import finalize
from sppdet.proposals.selective_search import selective_search
from sppdet.proposals.selective_search_rcnn import selective_search_rcnn
from sppdet.proposals.stage import run_proposals
from sppdet.proposals.store import open_proposals
from tests.scenes import tiny_voc_tree

# The settings each method reads, spelled out here rather than taken from the library.
SS = ["ss_max_side", "ss_base_k", "ss_inc_k", "ss_sigma", "ss_min_region", "ss_rank_seed"]
SSR = ["ss_rcnn_width", "ss_rcnn_enlarge", "ss_rcnn_ks", "ss_sigma", "ss_rank_seed"]
EB = ["eb_max_side", "eb_alpha", "eb_beta", "eb_min_score", "eb_max_aspect_ratio",
      "eb_min_box_area", "eb_edge_merge_thr", "eb_cluster_min_mag"]  # fmt: skip
EDGES = ["edge_sigmas", "edge_norm_radius", "edge_percentile", "edge_gamma"]
HEAD = ["method", "max_boxes", "min_side"]
TAIL = ["opencv", "algorithm_version"]
# (method, with an edge model) -> the params' keys, in order.
EXPECTED_KEYS = {
    ("ss-fast", False): [*HEAD, *SS, *TAIL],
    ("ss-quality", False): [*HEAD, *SS, *TAIL],
    ("edgeboxes", False): [*HEAD, *EB, *EDGES, "edges", *TAIL],
    ("edgeboxes", True): [*HEAD, *EB, "edges", *TAIL],
    ("ss+eb", False): [*HEAD, *SSR, *EB, *EDGES, "edges", *TAIL],
    ("ss+eb", True): [*HEAD, *SSR, *EB, "edges", *TAIL],
    ("ss-rcnn", False): [*HEAD, *SSR, *TAIL],
}
# Fingerprints of the then default settings (min_side 20, built-in edges, OpenCV 5.0.0) recorded
# before the method table replaced the if/else dispatch: stores made before and after must match.
RECORDED_FINGERPRINTS = {
    "ss-fast": "cfc835edb5ff7882",
    "ss-quality": "6fbe1d1fc81fb710",
    "edgeboxes": "f6aa04880b24b8ba",
}
# ss+eb's, which must change: its boxes are now ss-rcnn's list then EdgeBoxes' (algorithm 2).
OLD_SS_PLUS_EB_FINGERPRINT = "28dbd4c168e17f38"
NOT_PER_METHOD = {"method", "shard_size"}  # the method's name itself; the store's layout


@pytest.fixture
def edge_model(tmp_path: Path) -> Path:
    model = tmp_path / "m.yml"  # method_params only hashes the file
    model.write_text("%YAML:1.0\n")
    return model


def _perturbed(cfg: ProposalConfig, name: str) -> ProposalConfig:
    value = getattr(cfg, name)
    if isinstance(value, tuple):
        return dataclasses.replace(cfg, **{name: (*value, 5.0)})
    return dataclasses.replace(cfg, **{name: value + (1 if isinstance(value, int) else 0.25)})


def _grid_boxes(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """A trivial method: the whole image, then its four quarters (row by row)."""
    height, width = rgb.shape[:2]
    xs, ys = (0, width // 2, width), (0, height // 2, height)
    quarters = [(xs[i], ys[j], xs[i + 1] - 1, ys[j + 1] - 1) for j in (0, 1) for i in (0, 1)]
    boxes = np.array([(0, 0, width - 1, height - 1), *quarters])
    return finalize(boxes, np.arange(len(boxes)), width, height, cfg.min_side, cfg.max_boxes)


GRID = ProposalMethod("grid", _grid_boxes, settings=())
# The tiny VOC scenes are 160 x 120.
GRID_BOXES_160x120 = [
    [0, 0, 159, 119],
    [0, 0, 79, 59],
    [80, 0, 159, 59],
    [0, 60, 79, 119],
    [80, 60, 159, 119],
]


def test_unknown_methods_are_refused_in_one_line_naming_the_known_ones(scene: np.ndarray) -> None:
    known = "choose one of ss-fast, ss-quality, edgeboxes, ss+eb, ss-rcnn"
    message = f"unknown proposal method 'slow-search': {known}"
    with pytest.raises(SppdetError, match=re.escape(message)) as info:
        proposal_method("slow-search")
    assert "\n" not in str(info.value)
    cfg = ProposalConfig(method="slow-search")
    with pytest.raises(SppdetError, match="unknown proposal method 'slow-search'"):
        propose(scene, cfg)
    with pytest.raises(SppdetError, match="unknown proposal method 'slow-search'"):
        method_params(cfg)


def test_the_table_names_each_methods_function_and_edge_use(scene: np.ndarray) -> None:
    assert list(METHODS) == ["ss-fast", "ss-quality", "edgeboxes", "ss+eb", "ss-rcnn"]
    assert all(proposal_method(name).name == name for name in METHODS)
    assert edge_methods() == ["edgeboxes", "ss+eb"]
    cfg = ProposalConfig()
    direct = {
        "ss-fast": selective_search(scene, cfg),
        "ss-quality": selective_search(scene, cfg, quality=True),
        "edgeboxes": edge_boxes(scene, cfg),
        "ss+eb": selective_search_and_edge_boxes(scene, cfg),
        "ss-rcnn": selective_search_rcnn(scene, cfg),
    }
    for name, boxes in direct.items():
        assert len(boxes) > 0
        np.testing.assert_array_equal(propose(scene, dataclasses.replace(cfg, method=name)), boxes)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(1, 1), (12, 9), (40, 18)])
def test_tiny_images_give_no_boxes_or_valid_ones(method: str, shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (*shape, 3)).astype(np.uint8)
    cfg = ProposalConfig(method=method)
    boxes = propose(rgb, cfg)
    assert boxes.shape[1] == 4
    assert len(boxes) == 0 or (boxes[:, 2] - boxes[:, 0] + 1).min() >= cfg.min_side


@pytest.mark.parametrize(("method", "with_model"), list(EXPECTED_KEYS))
def test_each_fingerprint_holds_exactly_its_methods_settings(
    method: str, with_model: bool, edge_model: Path
) -> None:
    cfg = ProposalConfig(method=method)
    model = edge_model if with_model else None
    params = method_params(cfg, model)
    assert list(params) == EXPECTED_KEYS[method, with_model]
    assert params["method"] == method and params["opencv"] == cv2.__version__
    # Behaviour, not just names: a setting moves the fingerprint if and only if the method reads it
    base = fingerprint(params)
    for field in dataclasses.fields(ProposalConfig):
        if field.name in NOT_PER_METHOD:
            continue
        moved = fingerprint(method_params(_perturbed(cfg, field.name), model)) != base
        assert moved == (field.name in params), field.name


def test_fingerprints_match_the_ones_recorded_before_the_table() -> None:
    def recorded_settings(method: str) -> str:
        cfg = ProposalConfig(method=method, min_side=20)
        return fingerprint({**method_params(cfg), "opencv": "5.0.0"})

    for method, recorded in RECORDED_FINGERPRINTS.items():
        assert recorded_settings(method) == recorded, method
    assert recorded_settings("ss+eb") != OLD_SS_PLUS_EB_FINGERPRINT
    assert method_params(ProposalConfig(method="ss+eb"))["algorithm_version"] == 2


def test_every_setting_is_in_some_methods_fingerprint(edge_model: Path) -> None:
    # A new ProposalConfig field that no table entry names would leave stale stores unnoticed.
    seen = {key for method in METHODS for key in method_params(ProposalConfig(method=method))}
    names = {field.name for field in dataclasses.fields(ProposalConfig)}
    assert names - NOT_PER_METHOD <= seen


def test_a_new_method_carries_only_the_settings_its_entry_names(
    monkeypatch: pytest.MonkeyPatch, edge_model: Path
) -> None:
    # The old dispatch added the Selective Search settings to every method but "edgeboxes".
    monkeypatch.setitem(METHODS, GRID.name, GRID)
    edge_grid = dataclasses.replace(GRID, name="edge-grid", uses_edges=True)
    monkeypatch.setitem(METHODS, edge_grid.name, edge_grid)
    assert list(method_params(ProposalConfig(method="grid"))) == [*HEAD, *TAIL]
    assert list(method_params(ProposalConfig(method="edge-grid"))) == [
        *HEAD, *EDGES, "edges", *TAIL
    ]  # fmt: skip
    with_model = method_params(ProposalConfig(method="edge-grid"), edge_model)
    assert list(with_model) == [*HEAD, "edges", *TAIL]
    assert edge_methods() == ["edgeboxes", "ss+eb", "edge-grid"]


def test_a_method_registered_with_one_entry_runs_through_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edge_model: Path
) -> None:
    monkeypatch.setitem(METHODS, GRID.name, GRID)
    dataset = load_dataset(tiny_voc_tree(tmp_path), "trainval")
    work = WorkDir.at(tmp_path / "work")
    cfg = ProposalConfig(method="grid", shard_size=2)
    summary = run_proposals(dataset, work, cfg, progress=False)  # one worker: this process
    assert (summary.method, summary.computed, summary.mean_boxes) == ("grid", 5, 5.0)
    with open_proposals(work, "trainval") as store:
        assert set(store.params) == {*HEAD, *TAIL} and store.params["method"] == "grid"
        for image_id in store.image_ids:
            np.testing.assert_array_equal(store.boxes(image_id), GRID_BOXES_160x120)
    with pytest.raises(SppdetError, match=r"--edge-model is used by --method edgeboxes or ss\+eb"):
        run_proposals(dataset, work, cfg, edge_model=edge_model, progress=False)


@pytest.mark.parametrize("method", ["ss-fast", "ss-rcnn", "edgeboxes"])
def test_opencv_without_contrib_fails_in_one_line_for_the_python_api(monkeypatch, method) -> None:  # type: ignore[no-untyped-def]
    """A method called from Python (the Detector API, no CLI around it) names the package that
    brings cv2.ximgproc back, instead of an AttributeError."""
    monkeypatch.delattr(cv2, "ximgproc")
    image = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(SppdetError) as failure:
        propose(image, ProposalConfig(method=method))
    assert str(failure.value) == NO_XIMGPROC
