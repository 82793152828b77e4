"""``Detector``: a trained SPP-net detector as one Python object.

    from sppdet.detector import Detector

    det = Detector.load("work")                # a work folder, or a file from `sppdet export`
    for found in det.predict(["a.jpg", "b.jpg"]):
        print(found.names, found.scores, found.boxes)

``load`` builds the trunk and the heads once, on the device. ``predict`` then runs the pipeline
of the ``detect`` stage on each image, in memory: the proposals by the method and settings the
models were trained with (``proposals.methods``), the conv5 maps at the trained scales in the
cache's dtype (``maps.ImageMaps``), pooling, fc6/fc7 and SVM scores on the device
(``WindowScorer`` through ``scorer.window_candidates``), and the post-processing of one image
(``postprocess.image_detections``: per-class NMS, the best 100 per class, NMS on the regressed
boxes). Its detections are those ``sppdet detect`` writes for the same image, except that the
results files of a split also keep at most 5 x images detections per class over the split.
The scores are probabilities: the SVM margins through the Platt sigmoids stored with the SVMs
(or, with ``scorer="softmax"``, the fine-tuned net's softmax). Nothing is printed and no file
is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import Trunk, build_trunk, to_device
from sppdet.detector.core.config import (
    DRAW_SCORE_THRESHOLD,
    DetectConfig,
    ProposalConfig,
    SppConfig,
    as_dict,
    section_from_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.postprocess import image_detections
from sppdet.detector.detection.scorer import WindowScorer, check_scoring, window_candidates
from sppdet.detector.heads.bbox_reg import BoxRegressor
from sppdet.detector.heads.calibration import PlattScaling
from sppdet.detector.heads.svm import LinearScorer
from sppdet.detector.inference.detections import Detections
from sppdet.detector.inference.inputs import Images, image_inputs, load_rgb
from sppdet.detector.inference.maps import ImageMaps, MapSettings
from sppdet.detector.inference.model import (
    EXPORT_FIX,
    fc_head_from_record,
    model_from_work,
    read_model_file,
)
from sppdet.detector.spp.geometry import CellGeometry
from sppdet.detector.spp.pooler import WindowPooler
from sppdet.detector.training.runtime import Runtime
from sppdet.proposals.methods import proposal_method, propose

log = logging.getLogger(__name__)


class Detector:
    """A trained detector: trunk, heads and settings, loaded once; ``predict`` runs it."""

    def __init__(
        self, model: dict[str, Any], runtime: Runtime, where: str, scorer: str = "svm"
    ) -> None:
        """Build from a model dict (``inference.model``); use ``load`` or ``from_model``."""
        fix = EXPORT_FIX
        try:
            self.class_names: tuple[str, ...] = tuple(str(c) for c in model["classes"])
            self.proposals = section_from_dict(ProposalConfig, model["proposals"], where, fix)
            proposal_method(self.proposals.method)  # an unknown method fails here, not later
            self.map_settings = _map_settings(model["store"], model["spp"], where)
            self.trunk, self.preprocessing = _trunk(model["trunk"], runtime.device, where)
            self.scorer = _scorer(model, runtime, where, check_scoring(scorer))
        except (KeyError, TypeError, ValueError) as exc:
            raise SppdetError(f"{where}: malformed model ({exc!r}) ; {fix}") from None
        self.calibrated = scorer == "softmax" or self.scorer.calibration is not None
        if not self.calibrated:
            log.warning(
                "%s: the SVMs carry no calibration (trained before sppdet had it): scores are "
                "SVM margins, not probabilities ; rerun `sppdet train-svm` to calibrate them",
                where,
            )
        self.fingerprint = str(model["fingerprint"])
        self.runtime = runtime
        self.pooler = WindowPooler()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "fp32",
        detect: DetectConfig | None = None,
        scorer: str = "svm",
    ) -> Detector:
        """The detector in PATH: a work folder (its trained models and recorded settings) or a
        model file written by ``sppdet export``.

        DEVICE: auto (a GPU when present), cpu, cuda or cuda:N. PRECISION: fc6/fc7 in fp32, or
        under bf16/fp16 autocast. DETECT replaces the model's post-processing settings (the
        pre-NMS margin threshold, NMS IoU, detections kept per class). SCORER: svm (the SVMs'
        calibrated margins) or softmax (the fine-tuned net's fc8, when the SVMs read its fc7).
        """
        path = Path(path)
        if path.is_dir():
            model = model_from_work(WorkDir.at(path), detect)
        elif path.is_file():
            model = read_model_file(path)
            if detect is not None:
                model = {**model, "detect": as_dict(detect)}
        else:
            raise SppdetError(
                f"{path}: no such work folder or model file ; pass a trained work folder or a "
                "file written by `sppdet export`"
            )
        return cls.from_model(model, device, precision, str(path), scorer)

    @classmethod
    def from_model(
        cls,
        model: dict[str, Any],
        device: str = "auto",
        precision: str = "fp32",
        where: str = "model",
        scorer: str = "svm",
    ) -> Detector:
        """The detector of a model dict (``inference.model``), on DEVICE; WHERE names it in
        messages. See ``load`` for the rest."""
        preset = str(model.get("config", {}).get("preset", "released"))
        return cls(model, Runtime.create(device, precision, preset), where, scorer)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def __repr__(self) -> str:
        return (
            f"Detector({self.trunk.arch}, classes={list(self.class_names)}, "
            f"scales={list(self.map_settings.scales)}, device={self.device})"
        )

    def predict(
        self, images: Images, score_threshold: float | None = DRAW_SCORE_THRESHOLD
    ) -> list[Detections]:
        """One ``Detections`` per image, in order, each sorted by descending score.

        IMAGES: a path, an H x W x 3 RGB uint8 array, or a list of them; all are checked
        before the first is detected. SCORE_THRESHOLD: keep the detections scoring above it
        (a probability; an SVM margin for SVMs trained before calibration existed), as
        ``detect --score-threshold`` does; None keeps all that pass the scorer's pre-NMS
        threshold and the NMS, as the results files do.
        """
        return [self._detect(load_rgb(image), score_threshold) for image in image_inputs(images)]

    def _detect(self, rgb: np.ndarray, score_threshold: float | None) -> Detections:
        height, width = rgb.shape[:2]
        # int32 boxes, exactly what the proposals store holds and detect reads back as float32
        boxes = propose(rgb, self.proposals).astype(np.float32)
        device = self.runtime.device
        with torch.inference_mode():
            maps = ImageMaps(
                rgb, self.trunk, self.preprocessing, self.map_settings, device, self.pooler
            )
            found = window_candidates(self.scorer, boxes, maps.pooled, width, height)
            kept = image_detections(found, self.scorer.cfg, device)
        margins = kept.scores
        probabilities = self.scorer.probabilities(margins, kept.labels)
        scores = margins if probabilities is None else probabilities.astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        if score_threshold is not None:
            order = order[scores[order] > score_threshold]
        return Detections(
            kept.boxes[order],
            scores[order],
            margins[order],
            kept.labels[order],
            self.class_names,
            self.calibrated,
        )


def _map_settings(store: dict[str, Any], spp: dict[str, Any], where: str) -> MapSettings:
    geometry = store["geometry"]
    return MapSettings(
        scales=tuple(int(s) for s in store["scales"]),
        max_size=None if store["max_size"] is None else int(store["max_size"]),
        dtype=str(store["dtype"]),
        precision=str(store.get("precision", "fp32")),
        channels=int(store["channels"]),
        geometry=CellGeometry(
            int(geometry["stride"]), float(geometry["offset"]), int(geometry["receptive_field"])
        ),
        spp=section_from_dict(SppConfig, spp, where, EXPORT_FIX),
    )


def _trunk(record: dict[str, Any], device: torch.device, where: str) -> tuple[Trunk, Preprocessing]:
    trunk = build_trunk(str(record["backbone"]))
    try:
        trunk.features.load_state_dict(record["state"], strict=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise SppdetError(
            f"{where}: trunk weights do not fit {trunk.arch} ({detail[-1][:200]}) ; {EXPORT_FIX}"
        ) from None
    preprocessing = Preprocessing.from_dict(record["preprocessing"], where)
    return to_device(trunk, device), preprocessing


def _scorer(model: dict[str, Any], runtime: Runtime, where: str, scoring: str) -> WindowScorer:
    svm, bbox = model["svm"], model["bbox"]
    head = fc_head_from_record(model["head"], where)
    if scoring == "softmax" and (head is None or not svm["finetuned"]):
        raise SppdetError(
            f"{where}: the softmax scorer needs the fine-tuned fc8, and these SVMs read "
            f"{'pool5' if head is None else 'the backbone fc6/fc7'} ; use scorer svm"
        )
    regressor = None
    if bbox is not None:
        regressor = BoxRegressor(
            bbox["weights"].numpy(),
            bbox["mean"].numpy(),
            bbox["unwhiten"].numpy(),
            bbox["trained"].numpy(),
        )
    return WindowScorer(
        head=None if head is None else head.to(runtime.device),
        layer=str(svm["layer"]),
        scorer=LinearScorer(svm["weights"].numpy(), svm["bias"].numpy()),
        svm_scale=float(svm["scale"]),
        regressor=regressor,
        bbox_scale=1.0 if bbox is None else float(bbox["scale"]),
        cfg=section_from_dict(DetectConfig, model["detect"], where, EXPORT_FIX),
        runtime=runtime,
        calibration=PlattScaling.of_svm(svm),
        scoring=scoring,
    )
