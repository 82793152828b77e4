"""A backbone with weights: ``load_backbone`` and ``describe_weights`` for ``--weights``.

``--weights``:
  * ``random``: the trunk's own deterministic initialisation (seed 0), for smoke runs and
    ``pretrain``; the preprocessing is the one its registry entry declares.
  * ``imagenet``: torchvision's weights API, the enum the backbone's registry entry names
    (AlexNet_Weights, VGG16_Weights, ResNet50_Weights .IMAGENET1K_V1); needs the file in torch's
    hub cache or a network connection. ZF-5 has no torchvision weights.
  * ``PATH``: a backbone checkpoint or a torchvision state dict of the whole classifier
    (``sppdet.detector.backbones.checkpoint``), loaded with ``torch.load(weights_only=True)``.

``weights_id`` names the weights in fingerprints without building the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.fingerprint import file_hash
from sppdet.detector.backbones.checkpoint import from_torchvision_state, read_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.registry import (
    BackboneSpec,
    TorchvisionSource,
    backbone_spec,
    backbone_specs,
)
from sppdet.detector.backbones.trunk import RANDOM_SEED, Trunk, build_trunk
from sppdet.detector.core.errors import SppdetError


@dataclass
class Backbone:
    """A trunk with the preprocessing its weights expect and, when known, pretrained fc6/fc7.

    ``head`` holds fc6/fc7 weights {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"} (the
    attribute names of ``sppdet.detector.heads.FcHead``) for pooled inputs of ``head_pyramid``.
    ``weights_id`` names the weights for fingerprints: ``random:seed0``,
    ``imagenet:AlexNet_Weights.IMAGENET1K_V1`` or ``file:<sha256 prefix>``.
    """

    arch: str
    trunk: Trunk
    preprocessing: Preprocessing
    weights_id: str
    head: dict[str, torch.Tensor] | None = None
    head_pyramid: tuple[int, ...] | None = None
    source: str = ""

    @property
    def channels(self) -> int:
        return self.trunk.out_channels

    def head_state(self, pyramid: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pretrained weights usable by a head fed with PYRAMID: fc6 and fc7 when the pyramid is
        the one fc6 was trained on, fc7 alone otherwise (fc6's input size differs), or nothing."""
        if self.head is None:
            return {}
        if self.head_pyramid is not None and tuple(pyramid) == tuple(self.head_pyramid):
            return {k: v.clone() for k, v in self.head.items()}
        return {k: v.clone() for k, v in self.head.items() if k.startswith("fc7.")}


def weights_kind(weights: str) -> str:
    return weights if weights in ("imagenet", "random") else "file"


def _imagenet_source(spec: BackboneSpec) -> TorchvisionSource:
    """The torchvision classifier behind ``--weights imagenet`` for SPEC, or a user error."""
    if spec.torchvision is None:
        others = "|".join(s.name for s in backbone_specs() if s.torchvision is not None)
        raise SppdetError(
            f"--weights imagenet: torchvision has no {spec.title} weights; train them with "
            f"`sppdet pretrain`, pass --weights PATH, or use --backbone {others}"
        )
    return spec.torchvision


def describe_weights(arch: str, weights: str) -> tuple[str, Preprocessing]:
    """(weights_id, preprocessing) of ARCH with WEIGHTS, without building the network.

    For a file this reads the checkpoint (to learn its preprocessing) and hashes its bytes.
    """
    spec = backbone_spec(arch)
    kind = weights_kind(weights)
    if kind == "random":
        return f"random:seed{RANDOM_SEED}", spec.preprocessing
    if kind == "imagenet":
        source = _imagenet_source(spec)
        return f"imagenet:{source.weights_enum()!r}", source.preprocessing
    record = read_checkpoint(weights, arch)
    return f"file:{file_hash(weights)}", record["preprocessing"]


def load_backbone(arch: str, weights: str = "random") -> Backbone:
    """The backbone ARCH with WEIGHTS = ``random`` | ``imagenet`` | PATH (see module doc)."""
    spec = backbone_spec(arch)
    kind = weights_kind(weights)
    trunk = build_trunk(arch)
    if kind == "random":
        weights_id, pre = describe_weights(arch, weights)
        return Backbone(arch, trunk, pre, weights_id, source="random initialisation")
    if kind == "imagenet":
        enum = _imagenet_source(spec).weights_enum()
        state = _download_imagenet(enum)
        record = from_torchvision_state(state, arch, f"torchvision {enum!r}")
        weights_id = f"imagenet:{enum!r}"
    else:
        record = read_checkpoint(weights, arch)
        weights_id = f"file:{file_hash(weights)}"
    _load_trunk_state(trunk, record["trunk"], str(weights))
    head = record.get("head")
    pyramid = record.get("head_pyramid")
    return Backbone(
        arch,
        trunk,
        record["preprocessing"],
        weights_id,
        head=dict(head) if head else None,
        head_pyramid=tuple(int(n) for n in pyramid) if pyramid else None,
        source=str(record.get("source", "")),
    )


def _download_imagenet(enum: Any) -> dict[str, torch.Tensor]:
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # offline, proxy refusal, truncated download, bad hash
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise SppdetError(
            f"--weights imagenet: cannot fetch {enum.url} ({reason}); this machine looks "
            f"offline: copy that file into {hub} or pass --weights PATH to it"
        ) from None


def _load_trunk_state(trunk: Trunk, state: Mapping[str, torch.Tensor], where: str) -> None:
    try:
        trunk.features.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc)
        raise SppdetError(
            f"{where}: trunk weights do not fit {trunk.arch} ({detail[:200]}); pass the "
            "--backbone these weights were made for"
        ) from None
