"""The backbone checkpoint: reading one (or a torchvision classifier's state dict) and writing one.

Format (``save_backbone_checkpoint``), a dict saved with ``torch.save``::

    format        "sppdet-backbone"
    version       1
    arch          the backbone's registered name (registry.backbone_names()), e.g. "zf5"
    trunk         state dict of Trunk.features (zf5: conv1.weight ...; torchvision trunks keep
                  torchvision's names: 0.weight, 3.weight, ... for AlexNet and VGG-16,
                  conv1.weight, layer1.0.bn1.running_mean, ... for ResNet-50)
    head          None or {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    head_pyramid  None or the pyramid levels fc6 was trained on, e.g. [1, 2, 3, 6]
    preprocessing {"mean": [3 floats], "std": [3 floats], "channel_order": "RGB"|"BGR",
                   "pixel_range": 255.0 | 1.0}   (mean/std in the network's channel order and
                  pixel range: x = (pixel - mean) / std)
    source        free text: what made it

Only tensors, numbers, strings, lists and dicts, so ``weights_only=True`` loads it.

A torchvision state dict of a whole classifier (e.g. ``alexnet-owt-7be5be79.pth`` fetched on
another machine) reads as a checkpoint of the backbone it is named for: the trunk's entries, as
its registry entry's ``TorchvisionSource`` lists them, fc6/fc7 when the classifier has them, and
torchvision's preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sppdet.cache.atomic import atomic_output, unloadable_reason
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.registry import backbone_names, backbone_spec, backbone_specs
from sppdet.detector.backbones.trunk import Trunk
from sppdet.detector.core.errors import SppdetError

CHECKPOINT_FORMAT = "sppdet-backbone"


CHECKPOINT_VERSION = 1


def read_checkpoint(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    """Load and validate a weights file: a backbone checkpoint or a torchvision state dict.

    Returns the checkpoint record with ``preprocessing`` as a Preprocessing. ARCH, when given,
    must match the checkpoint's (a torchvision state dict takes it from ARCH).
    """
    path = Path(path)
    if not path.is_file():
        raise SppdetError(
            f"{path}: weights file not found; pass --weights imagenet, random or an existing "
            "checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code, truncated zip, foreign formats: named in one line
        raise SppdetError(
            f"{path}: {unloadable_reason(exc)} ; pass a checkpoint written by "
            "save_backbone_checkpoint or a torchvision state dict"
        ) from None
    if not isinstance(obj, dict):
        raise SppdetError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if obj.get("format") != CHECKPOINT_FORMAT:
        if _is_torchvision_state(obj):
            if arch is None:
                raise SppdetError(f"{path}: a torchvision state dict; say its --backbone")
            return from_torchvision_state(obj, arch, str(path))
        raise SppdetError(
            f"{path}: neither an sppdet backbone checkpoint nor a torchvision state dict"
        )
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise SppdetError(
            f"{path}: backbone checkpoint version {version!r} is not supported (this sppdet "
            f"reads version {CHECKPOINT_VERSION}); upgrade sppdet or re-save the checkpoint"
        )
    found = obj.get("arch")
    if found not in backbone_names():
        raise SppdetError(f"{path}: checkpoint names unknown architecture {found!r}")
    if arch is not None and found != arch:
        raise SppdetError(
            f"{path}: checkpoint holds {found} weights, not {arch}; pass --backbone {found}"
        )
    if not isinstance(obj.get("trunk"), dict):
        raise SppdetError(f"{path}: checkpoint has no trunk state")
    record = dict(obj)
    record["preprocessing"] = Preprocessing.from_dict(obj.get("preprocessing") or {}, str(path))
    return record


def save_backbone_checkpoint(
    path: str | Path,
    arch: str,
    trunk: nn.Module,
    preprocessing: Preprocessing,
    head: nn.Module | Mapping[str, torch.Tensor] | None = None,
    head_pyramid: Sequence[int] | None = None,
    source: str = "",
) -> Path:
    """Write a version-1 backbone checkpoint (module doc) atomically; returns PATH.

    TRUNK is a Trunk (or its ``features``); HEAD a module with ``fc6``/``fc7`` Linear layers (for
    example ``heads.fc.FcHead``) or their state dict, saved with HEAD_PYRAMID, the pyramid of the
    pooled input fc6 was trained on.
    """
    backbone_spec(arch)  # refuses an unknown name
    features = trunk.features if isinstance(trunk, Trunk) else trunk
    head_state = None
    if head is not None:
        state = head.state_dict() if isinstance(head, nn.Module) else dict(head)
        keys = [f"{layer}.{part}" for layer in ("fc6", "fc7") for part in ("weight", "bias")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"head lacks {missing}")
        if head_pyramid is None:
            raise ValueError("a head needs the pyramid its fc6 was trained on")
        head_state = {k: state[k].detach().cpu().clone() for k in keys}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "trunk": {k: v.detach().cpu().clone() for k, v in features.state_dict().items()},
        "head": head_state,
        "head_pyramid": [int(n) for n in head_pyramid] if head_state is not None else None,
        "preprocessing": preprocessing.to_dict(),
        "source": source,
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def _is_torchvision_state(state: Mapping[str, Any]) -> bool:
    """Whether STATE holds trunk entries of any registered torchvision classifier."""
    return any(spec.torchvision.trunk_state(state) for spec in backbone_specs() if spec.torchvision)


def from_torchvision_state(state: Mapping[str, Any], arch: str, where: str) -> dict[str, Any]:
    """A torchvision classifier state dict -> checkpoint record (trunk, fc6/fc7, pyramid)."""
    source = backbone_spec(arch).torchvision
    if source is None:
        raise SppdetError(f"{where}: a torchvision state dict cannot hold {arch} weights")
    head = source.head_state(state)
    return {
        "arch": arch,
        "trunk": source.trunk_state(state),
        "head": head,
        "head_pyramid": list(source.head_pyramid) if head and source.head_pyramid else None,
        "preprocessing": source.preprocessing,
        "source": where,
    }
