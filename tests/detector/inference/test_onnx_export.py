"""The exported ONNX model, run by onnxruntime, gives sppdet's numbers: the detect stage's path
(trunk, float16 conv5 maps, ``WindowPooler``, ``WindowScorer``, Platt sigmoids, regressors) on
the same image, scale and windows, within bounds derived from the float formats involved."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector import Detector
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.features.reader import TORCH_DTYPES
from sppdet.detector.inference.maps import ImageMaps
from sppdet.detector.inference.model import model_from_work
from sppdet.detector.inference.onnx_export import (
    ONNX_FORMAT,
    OnnxInputs,
    export_onnx,
    onnx_inputs,
)
from sppdet.detector.inference.onnx_graph import folded_regressor
from sppdet.detector.spp.geometry import boxes_to_cells, edge_shift
from sppdet.detector.spp.pooler import WindowPooler
from sppdet.proposals.methods import propose
from tests.detector.training.shared import make_pool5_work

FLOAT16_ROUNDING = 2.0**-11  # relative error of rounding a normal float32 to float16
# A sum of n float32 products is off by about sqrt(n) * 2^-24 of the sum of their magnitudes;
# 2^-16 covers n up to 2^16 (fc6 reads 12,800 features) in each of the two implementations.
FLOAT32_SUMS = 2.0**-16
FIRST_ORDER_SLACK = 2.0  # the head is piecewise linear: ReLUs near zero may switch in between


@dataclass
class Outputs:
    conv5: np.ndarray  # [C, h, w] float32 (before the cache's rounding)
    pooled: np.ndarray  # [N, D] what the scorer read
    scores: np.ndarray
    probabilities: np.ndarray | None  # None: the SVMs carry no calibration
    deltas: np.ndarray | None  # None: no box regressors


@pytest.fixture(scope="module")
def pool5_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    """A work folder with pool5 SVMs only (no fc layers, no regressors) on float32 maps."""
    return make_pool5_work(tmp_path_factory.mktemp("pool5"))


@pytest.fixture(scope="module", params=["fc7", "pool5"])
def exported(request, tmp_path_factory) -> Exported:  # type: ignore[no-untyped-def]
    """A tiny model exported to ONNX: fc7 SVMs with regressors and calibration on float16 maps
    (the API tests' work folder), or pool5 SVMs alone on float32 maps. The onnxruntime session
    also returns conv5 (the input of the graph's MaxRoiPool nodes)."""
    data, work = request.getfixturevalue("trained" if request.param == "fc7" else "pool5_trained")
    model = model_from_work(work)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    proto = onnx.load(str(path))
    conv5 = next(n for n in proto.graph.node if n.op_type == "MaxRoiPool").input[0]
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(conv5, onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    detector = Detector.from_model(model, device="cpu")
    return Exported(data, detector, session, path)


@dataclass
class Exported:
    data: Path
    detector: Detector
    session: ort.InferenceSession
    path: Path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.detector.class_names

    def records(self, count: int) -> list[ImageRecord]:
        return load_dataset(self.data, "test", self.classes).records[:count]


def test_the_onnx_model_describes_itself(exported: Exported) -> None:
    detector, proto = exported.detector, onnx.load(str(exported.path))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["classes"] == list(exported.classes)
    assert meta["scales"] == list(detector.map_settings.scales)
    assert meta["preprocessing"] == detector.preprocessing.to_dict()
    calibrated = detector.scorer.calibration is not None
    regresses = detector.scorer.regressor is not None
    expected = ["scores"] + ["probabilities"] * calibrated + ["deltas"] * regresses
    assert meta["outputs"] == expected
    assert meta["pooling"] == {
        "6": "MaxRoiPool 6x6",
        "3": "MaxPool 2x2 of level 6",
        "2": "MaxPool 3x3 of level 6",
        "1": "MaxPool 2x2 of level 2",
    }
    assert [i.name for i in proto.graph.input] == ["image", "windows"]
    assert [o.name for o in proto.graph.output] == meta["outputs"]
    assert "MaxRoiPool" in {node.op_type for node in proto.graph.node}


def sppdet_path(detector: Detector, inputs: OnnxInputs) -> Outputs:
    """What the detect stage computes for the windows at this scale: conv5 by the trunk, stored
    in the cache's dtype, cells by ``boxes_to_cells``, ``WindowPooler`` into float32
    (``ImageMaps.pooled``), ``WindowScorer.scores``, the Platt sigmoids, ``BoxRegressor``."""
    settings, scorer = detector.map_settings, detector.scorer
    shift = edge_shift(settings.spp.window_mapping, settings.geometry)
    with torch.inference_mode():
        conv5 = detector.trunk(torch.from_numpy(inputs.image))[0]
        height, width = conv5.shape[1:]
        windows = inputs.windows.astype(np.float64)
        cells = boxes_to_cells(windows, 1.0, settings.geometry, height, width, shift)
        stored = conv5.to(TORCH_DTYPES[settings.dtype])
        out = torch.empty(len(cells), settings.dim)
        pooled = WindowPooler().pool(stored, cells, settings.pyramid, out=out)
        scores = scorer.scores(pooled)
        probabilities = None
        if scorer.calibration is not None:
            probabilities = scorer.calibration.probability_matrix(scores).numpy()
    deltas = None
    if scorer.regressor is not None:
        features = pooled.numpy() * scorer.bbox_scale  # as WindowScorer.candidates has them
        labels = [np.full(len(cells), k) for k in range(len(detector.class_names))]
        deltas = np.concatenate([scorer.regressor.deltas(features, k) for k in labels], 1)
    return Outputs(
        conv5.float().numpy(), pooled.numpy().copy(), scores.numpy(), probabilities, deltas
    )


def score_gradients(detector: Detector, pooled: np.ndarray) -> np.ndarray:
    """d score_k / d pooled_i [N, K, D] at POOLED (fc6, fc7 and the SVMs by autograd)."""
    scorer = detector.scorer

    def score(x: torch.Tensor) -> torch.Tensor:
        features = x[None] if scorer.head is None else scorer.head.features(x[None], scorer.layer)
        return scorer.scorer.score_tensor(features * scorer.svm_scale)[0]

    x = torch.from_numpy(pooled)
    return torch.func.vmap(torch.func.jacrev(score))(x).detach().numpy()


def test_onnxruntime_gives_sppdets_numbers(exported: Exported) -> None:
    """Two generated test images at every trained scale, their proposals plus the whole image, a
    window narrower than 13 px and one past the image.

    The bounds, per window and output (the cache's dtype: float16, or float32):
    - conv5: onnxruntime's float32 trunk and torch's differ by summation order; the detect stage
      keeps conv5 in the cache's dtype, so a difference under float16's step at the map's
      largest value (2^-11 x max) is below what sppdet itself rounds away with the default
      dtype. It is measured here: delta.
    - pooled features: a max over a bin moves by at most the largest change of its cells (delta),
      and the cache's rounding moves a value x >= 0 (conv5 ends in a ReLU) by at most u x (u:
      half the dtype's epsilon, 2^-11 for float16) or half its smallest subnormal:
      e_i = delta + u x_i + s.
    - SVM margins: sum_i |d score / d x_i| e_i (exact for pool5 SVMs, first order through fc6
      and fc7, whose ReLUs may switch within e_i of zero: doubled), plus the float32 sums of
      both implementations, 2^-16 x (sum_i |d score / d x_i| x_i + |bias|).
    - probabilities: sigmoid(-(a m + b)) has slope at most |a| / 4.
    - deltas: linear in pool5: sum_i |M_i| scale (e_i + 2^-16 x_i) with M the folded regressor,
      plus 2^-16 of its offset.
    The bounds catch a pooled feature out of place: shifting the features by one position moves
    most margins by more than them.
    """
    detector, session = exported.detector, exported.session
    names = [o.name for o in session.get_outputs()]
    scorer = detector.scorer
    stored = np.finfo(detector.map_settings.dtype)
    rounding, subnormal = float(stored.eps) / 2, float(stored.smallest_subnormal) / 2
    for record in exported.records(2):
        rgb = read_image(record.path)
        height, width = rgb.shape[:2]
        extra = [[0, 0, width - 1, height - 1], [30, 20, 35, 26], [-20, -10, width + 30, 40]]
        boxes = np.concatenate([propose(rgb, detector.proposals), extra]).astype(np.float32)
        for scale in detector.map_settings.scales:
            inputs = onnx_inputs(detector, rgb, boxes, scale)
            found = dict(zip(names, session.run(None, inputs.feed()), strict=True))
            want = sppdet_path(detector, inputs)
            assert found["scores"].shape == (len(boxes), len(exported.classes))

            ort_conv5 = found.pop(names[-1])[0]
            delta = float(np.abs(ort_conv5 - want.conv5).max())
            assert delta <= FLOAT16_ROUNDING * want.conv5.max(), (record.image_id, scale)
            assert want.conv5.min() >= 0  # the premise of the relative rounding bound

            x = want.pooled.astype(np.float64)
            e = delta + rounding * x + subnormal
            g = np.abs(score_gradients(detector, want.pooled).astype(np.float64))
            sums = FLOAT32_SUMS * (np.einsum("nkd,nd->nk", g, x) + np.abs(scorer.scorer.bias))
            score_bound = FIRST_ORDER_SLACK * np.einsum("nkd,nd->nk", g, e) + sums
            assert np.all(np.abs(found["scores"] - want.scores) <= score_bound)
            shifted = torch.from_numpy(np.roll(want.pooled, 1, axis=1))
            moved = scorer.scores(shifted).numpy()
            assert np.mean(np.abs(moved - want.scores) > score_bound) > 0.5

            assert ("probabilities" in found) == (want.probabilities is not None)
            if scorer.calibration is not None:
                slope = np.abs(scorer.calibration.a) / 4
                bound = slope * score_bound + FLOAT32_SUMS
                assert np.all(np.abs(found["probabilities"] - want.probabilities) <= bound)
            assert ("deltas" in found) == (want.deltas is not None)
            if scorer.regressor is not None:
                matrix, offset = folded_regressor(scorer.regressor)
                bound = (scorer.bbox_scale * (e + FLOAT32_SUMS * x)) @ np.abs(matrix)
                bound += FLOAT32_SUMS * np.abs(offset)
                assert found["deltas"].shape == (len(boxes), 4 * len(exported.classes))
                assert np.all(np.abs(found["deltas"] - want.deltas) <= bound)


def test_onnx_inputs_map_windows_to_the_detect_stages_cells(exported: Exported) -> None:
    """The windows ``onnx_inputs`` brings to a scale land on the cells the detect stage uses for
    that scale (``ImageInfo.cells`` on the original boxes), and pooling them as the reference
    does gives the API's features (``ImageMaps.pooled``) for the windows whose best scale it is."""
    detector = exported.detector
    settings = detector.map_settings
    shift = edge_shift(settings.spp.window_mapping, settings.geometry)
    for record in exported.records(3):
        rgb = read_image(record.path)
        boxes = propose(rgb, detector.proposals).astype(np.float32)
        maps = ImageMaps(
            rgb, detector.trunk, detector.preprocessing, settings, detector.device, WindowPooler()
        )
        best = maps.info.best_scale(boxes.astype(np.float64), settings.spp)
        api = maps.pooled(boxes).numpy()
        for index, scale in enumerate(settings.scales):
            inputs = onnx_inputs(detector, rgb, boxes, scale)
            height, width = int(maps.info.map_heights[index]), int(maps.info.map_widths[index])
            detect_cells = maps.info.cells(
                boxes, np.full(len(boxes), index), settings.geometry, shift
            )
            cells = boxes_to_cells(
                inputs.windows.astype(np.float64), 1.0, settings.geometry, height, width, shift
            )
            np.testing.assert_array_equal(cells, detect_cells)
            chosen = best == index
            if chosen.any():
                pooled = sppdet_path(detector, inputs).pooled
                np.testing.assert_array_equal(pooled[chosen], api[chosen])


def test_export_refusals_are_one_line(trained, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = model_from_work(trained[1])
    with pytest.raises(SppdetError, match=f"^{tmp_path}: a folder ; name the ONNX file"):
        export_onnx(model, tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(SppdetError, match=r"the onnx package is not installed ; pip install"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
