"""Checkpoint: split out of the former ``nets`` module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sppdet.cache.atomic import atomic_output
from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING, Preprocessing
from sppdet.detector.backbones.trunk import (
    _TORCHVISION_FC,
    _TRUNK_DEPTH,
    ARCHS,
    TORCHVISION_PYRAMID,
    Trunk,
    check_arch,
)
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
    except Exception as exc:  # pickle errors, truncated zip, foreign formats
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SppdetError(
            f"{path}: not a readable weights checkpoint ({reason}); rewrite it with "
            "save_backbone_checkpoint or pass a torchvision state dict"
        ) from None
    if not isinstance(obj, dict):
        raise SppdetError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if obj.get("format") != CHECKPOINT_FORMAT:
        if any(str(k).startswith("features.") for k in obj):
            if arch is None:
                raise SppdetError(f"{path}: a torchvision state dict; say its --backbone")
            return _from_torchvision_state(obj, arch, str(path))
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
    if found not in ARCHS:
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
    example ``heads.FcHead``) or their state dict, saved with HEAD_PYRAMID, the pyramid of the
    pooled input fc6 was trained on.
    """
    check_arch(arch)
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


def _from_torchvision_state(state: Mapping[str, Any], arch: str, where: str) -> dict[str, Any]:
    """A torchvision classifier state dict -> checkpoint record (trunk, fc6/fc7, pyramid)."""
    if arch not in _TORCHVISION_FC:
        raise SppdetError(f"{where}: a torchvision state dict cannot hold {arch} weights")
    trunk = {
        k[len("features.") :]: v
        for k, v in state.items()
        if k.startswith("features.") and int(k.split(".")[1]) < _TRUNK_DEPTH[arch]
    }
    fc6, fc7 = _TORCHVISION_FC[arch]
    head = {}
    for name, prefix in (("fc6", fc6), ("fc7", fc7)):
        for part in ("weight", "bias"):
            if f"{prefix}.{part}" in state:
                head[f"{name}.{part}"] = state[f"{prefix}.{part}"]
    return {
        "arch": arch,
        "trunk": trunk,
        "head": head if len(head) == 4 else None,
        "head_pyramid": list(TORCHVISION_PYRAMID[arch]) if len(head) == 4 else None,
        "preprocessing": TORCHVISION_PREPROCESSING,
        "source": where,
    }
