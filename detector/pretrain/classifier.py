"""The checkpoint ``sppdet pretrain`` writes, and the classifier ``classify-eval`` reads from it.

It is a backbone checkpoint (``backbones.checkpoint.save_backbone_checkpoint``: conv1-5, fc6,
fc7, pyramid, preprocessing) that ``cache-features --weights`` and fine-tuning read as is, plus
one key the backbone format passes through, ``classifier``: the class names, fc8, and the
training record (settings, colour statistics, history) that ``classify-eval`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.atomic import TMP_MARK, atomic_output
from sppdet.detector.backbones.checkpoint import read_checkpoint, save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.pretrain.model import SppClassifier
from sppdet.detector.spp.bins import pyramid_dim

CLASSIFIER_KEY = "classifier"  # the extra checkpoint entry classify-eval reads


def write_checkpoint(
    out: Path,
    model: SppClassifier,
    arch: str,
    pre: Preprocessing,
    classifier: dict[str, Any],
    source: str,
) -> Path:
    """The backbone checkpoint of MODEL plus the ``classifier`` entry (CLASSIFIER and fc8),
    which the backbone format carries through unread."""
    staged = out.with_name(f"{out.name}{TMP_MARK}backbone")
    try:
        save_backbone_checkpoint(
            staged,
            arch,
            model.trunk,
            pre,
            head=model.head,
            head_pyramid=model.pyramid,
            source=source,
        )
        payload = torch.load(staged, map_location="cpu", weights_only=True)
        head = model.head.state_dict()
        payload[CLASSIFIER_KEY] = {
            **classifier,
            "fc8.weight": head["fc8.weight"].detach().cpu().clone(),
            "fc8.bias": head["fc8.bias"].detach().cpu().clone(),
        }
        with atomic_output(out) as tmp:
            torch.save(payload, tmp)
    finally:
        staged.unlink(missing_ok=True)
    return out


@dataclass
class Classifier:
    """A ``pretrain`` checkpoint, ready to score images."""

    model: SppClassifier
    preprocessing: Preprocessing
    arch: str
    classes: tuple[str, ...]
    background: bool
    sizes: tuple[int, ...]
    crop_fraction: float
    record: dict[str, Any]  # the checkpoint's classifier entry (training settings, history)

    @property
    def test_size(self) -> int:
        return max(self.sizes)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Read a checkpoint written by ``sppdet pretrain`` (a backbone checkpoint with fc8)."""
    record = read_checkpoint(path)
    entry = record.get(CLASSIFIER_KEY)
    if not isinstance(entry, dict) or record.get("head") is None:
        raise SppdetError(
            f"{path}: a backbone checkpoint without a classifier (fc8); classify-eval needs one "
            "written by `sppdet pretrain`"
        )
    arch, pyramid = record["arch"], tuple(record["head_pyramid"])
    trunk = build_trunk(arch)
    fc6 = record["head"]["fc6.weight"]
    head = FcHead(fc6.shape[1], fc6.shape[0], entry["fc8.weight"].shape[0], dropout=0.0)
    expected = pyramid_dim(pyramid, trunk.out_channels)
    if fc6.shape[1] != expected:
        raise SppdetError(
            f"{path}: fc6 reads {fc6.shape[1]} values, pyramid {pyramid} gives "
            f"{expected}; the checkpoint is inconsistent"
        )
    try:
        trunk.features.load_state_dict(record["trunk"])
        # fc6 was trained on the trunk's own activations: the head's other buffers (its input
        # scale) keep their defaults.
        head.load_state_dict(
            {
                **head.state_dict(),
                **record["head"],
                "fc8.weight": entry["fc8.weight"],
                "fc8.bias": entry["fc8.bias"],
            }
        )
    except RuntimeError as exc:
        raise SppdetError(f"{path}: weights do not fit {arch} ({str(exc)[:160]})") from None
    model = SppClassifier(trunk, pyramid, head).to(device).eval()
    return Classifier(
        model,
        record["preprocessing"],
        arch,
        tuple(entry["classes"]),
        bool(entry["background"]),
        tuple(int(s) for s in entry["sizes"]),
        float(entry["crop_fraction"]),
        entry,
    )
