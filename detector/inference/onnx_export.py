"""``sppdet export --format onnx``: a trained detector's recognition part as an ONNX model.

The ONNX model scores given windows of one image at one scale, as the ``detect`` stage does for
windows assigned that scale (``onnx_graph.Recognition``; float32 throughout, where the detect
stage pools conv5 maps stored in the cache's dtype, float16 by default):

    inputs   image     [1, 3, H, W] float32: the image resized to one of the model's scales and
                       preprocessed (``onnx_inputs`` does both, as sppdet does them)
             windows   [N, 4] float32: x1 y1 x2 y2, 0-based pixels of that resized image
    outputs  scores         [N, K] the SVM margins (what the VOC results files rank by)
             probabilities  [N, K] their Platt probabilities (only when the SVMs are calibrated)
             deltas         [N, 4K] box-regression deltas (dx, dy, dw, dh) of class k in columns
                            4k .. 4k + 3, from pool5 (only when the model has regressors)

H, W and N are dynamic. The deltas are the regressors' raw output, not boxes: sppdet applies
them to the windows in the ORIGINAL image's pixels (``core.boxes.decode_deltas``, then clipped),
and the +1 in the widths makes that differ from decoding in the resized image and scaling back.
Proposals, the choice of a scale per window (``spp.scales``), NMS and thresholds stay outside;
the model's metadata (``onnx.ModelProto.metadata_props``) records what they need: class names,
preprocessing, scales, max_size, the SPP settings, the detect settings, fingerprint.

Why the legacy (TorchScript) exporter: torchvision registers the ONNX translation of
``roi_pool`` (to MaxRoiPool) for it only, and the newer exporter needs onnxscript besides.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.atomic import atomic_output
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.features.conv5 import resize_to_scales
from sppdet.detector.inference.detector import Detector
from sppdet.detector.inference.model import sppdet_version
from sppdet.detector.inference.onnx_graph import Recognition, WindowSpp
from sppdet.detector.spp.geometry import edge_shift, scale_factor

ONNX_OPSET = 17  # MaxRoiPool is in every opset; 17 is one onnxruntime >= 1.14 runs in full
ONNX_FORMAT = "sppdet-onnx"
ONNX_FORMAT_VERSION = 1  # of the inputs, outputs and metadata described in the docstring
INPUTS = ("image", "windows")
DYNAMIC_AXES = {"image": {2: "height", 3: "width"}, "windows": {0: "windows"}}
TRACE_SIDE = 224  # the sample image traced (any size: height and width stay dynamic)
MISSING_ONNX = "--format onnx: the onnx package is not installed ; pip install 'sppdet[onnx]'"


def export_onnx(model: dict[str, Any], path: str | Path, where: str = "model") -> Path:
    """Write MODEL's (``inference.model``) recognition part to PATH as an ONNX model, atomically;
    WHERE names the model in messages."""
    onnx = _onnx()
    path = Path(path)
    if path.is_dir():
        raise SppdetError(f"{path}: a folder ; name the ONNX file to write, e.g. model.onnx")
    detector = Detector.from_model(model, device="cpu", where=where)
    graph = recognition(detector)
    axes = {**DYNAMIC_AXES, **{name: {0: "windows"} for name in graph.output_names}}
    image = torch.zeros(1, 3, TRACE_SIDE, TRACE_SIDE)
    windows = torch.tensor([[0.0, 0.0, TRACE_SIDE - 1, TRACE_SIDE - 1], [8.0, 16.0, 100.0, 60.0]])
    proto = onnx.load_from_string(
        trace_to_onnx(graph, (image, windows), list(INPUTS), graph.output_names, axes)
    )
    onnx.checker.check_model(proto)
    onnx.helper.set_model_props(proto, metadata(model, detector, graph))
    with atomic_output(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def recognition(detector: Detector) -> Recognition:
    """The ``Recognition`` module of DETECTOR's trunk and heads, on the CPU in eval mode."""
    settings, scorer = detector.map_settings, detector.scorer
    spp = WindowSpp(
        settings.geometry,
        edge_shift(settings.spp.window_mapping, settings.geometry),
        settings.pyramid,
        settings.channels,
    )
    svm = (scorer.scorer.weights, scorer.scorer.bias, scorer.svm_scale)
    regressor = None if scorer.regressor is None else (scorer.regressor, scorer.bbox_scale)
    head = None if scorer.head is None else scorer.head.cpu()
    graph = Recognition(
        detector.trunk.cpu(), spp, head, scorer.layer, svm, scorer.calibration, regressor
    )
    return graph.eval()


def trace_to_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> bytes:
    """MODULE traced on ARGS and exported (TorchScript exporter, ``ONNX_OPSET``) as ONNX bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's own notices (its deprecation, tracing a shape check of roi_pool's
        # arguments, a reversed Slice it leaves unfolded) are about the exporter, not the
        # model: the graph is checked afterwards.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    return buffer.getvalue()


def metadata(model: dict[str, Any], detector: Detector, graph: Recognition) -> dict[str, str]:
    """What a caller of the ONNX model needs besides it, as JSON strings (metadata_props)."""
    settings = detector.map_settings
    values: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "sppdet_version": sppdet_version(),
        "classes": list(detector.class_names),
        "outputs": graph.output_names,
        "preprocessing": detector.preprocessing.to_dict(),
        "scales": list(settings.scales),
        "max_size": settings.max_size,
        "spp": model["spp"],
        "pooling": graph.spp.pooling(),
        "geometry": settings.geometry.to_dict(),
        "detect": model["detect"],
        "backbone": model["trunk"]["backbone"],
        "fingerprint": model["fingerprint"],
    }
    return {key: json.dumps(value) for key, value in values.items()}


@dataclass(frozen=True)
class OnnxInputs:
    """One image's inputs of the ONNX model at one scale."""

    image: np.ndarray  # [1, 3, h, w] float32, resized and preprocessed
    windows: np.ndarray  # [N, 4] float32, in the resized image's 0-based pixels
    effective_scale: int  # the resized image's shorter side (< scale when max_size caps it)

    def feed(self) -> dict[str, np.ndarray]:
        """The onnxruntime feed: ``session.run(None, inputs.feed())``."""
        return {"image": self.image, "windows": self.windows}


def onnx_inputs(detector: Detector, rgb: np.ndarray, boxes: np.ndarray, scale: int) -> OnnxInputs:
    """The ONNX model's inputs for windows BOXES ([N, 4], 0-based pixels of RGB, H x W x 3 uint8)
    at SCALE (pixels, the shorter side): RGB resized and preprocessed as ``cache-features`` does,
    the boxes brought to the resized image by the released code's factor (s - 1) / (min(H, W) - 1),
    multiplied before divided, in float64, so the ONNX model maps them to the cells the detect
    stage uses. Rounded to float32, they still do: a window edge on a cell boundary (a multiple
    of 1/2 px) stays on it, and one off it is at least 1 / (2 (min(H, W) - 1)) px away, more
    than float32's rounding error (2^-24 x 2,000 px) while min(H, W) < 4,000 px."""
    settings = detector.map_settings
    resized = resize_to_scales(rgb, [int(scale)], settings.max_size)[0]
    effective = min(resized.shape[:2])
    factor = scale_factor(effective, min(rgb.shape[:2]))
    windows = np.asarray(boxes, np.float64).reshape(-1, 4) * factor.numerator / factor.denominator
    image = detector.preprocessing(resized).numpy()
    return OnnxInputs(image, windows.astype(np.float32), int(effective))


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise SppdetError(MISSING_ONNX) from None
    return onnx
