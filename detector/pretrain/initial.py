"""The weights a ``pretrain`` run starts from (``PretrainConfig.weights``).

``random``: the seeded initialisation of ``pretrain.model.build_classifier``. PATH: a backbone
checkpoint (``convert-caffe``'s, an earlier ``pretrain``'s, or a torchvision state dict) whose
trunk replaces the random one, and whose fc6/fc7 do too when they fit the classifier (same
pyramid and width); fc8 is always new, since the classes are this run's.

A checkpoint brings its preprocessing, and the run keeps it: continued training must feed the
net what it was trained on (a Caffe-converted net: BGR, 0-255, its mean subtracted, unscaled),
not inputs normalised with this data set's colour statistics. Those statistics still drive the
colour augmentation, which alters RGB pixels before the preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sppdet.detector.backbones.checkpoint import read_checkpoint
from sppdet.detector.backbones.weights import Backbone, load_backbone, weights_kind
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.model import SppClassifier

log = logging.getLogger(__name__)

RANDOM = "random"  # PretrainConfig.weights of a run from the seeded initialisation


def checkpoint_arch(weights: str | None) -> str | None:
    """The backbone the checkpoint WEIGHTS holds, so that ``--backbone`` may be left out; None
    for no file (random)."""
    if weights is None or weights_kind(weights) != "file":
        return None
    return str(read_checkpoint(weights)["arch"])


def load_start(cfg: PretrainConfig) -> Backbone | None:
    """The checkpoint CFG starts from, read for CFG's backbone (a checkpoint of another
    architecture is refused in one line); None for a random start."""
    kind = weights_kind(cfg.weights)
    if kind == RANDOM:
        return None
    if kind == "imagenet":
        raise SppdetError(
            "--weights imagenet: pretrain starts from random weights or a checkpoint file ; pass "
            "--weights random, or PATH to a backbone checkpoint or torchvision state dict"
        )
    return load_backbone(cfg.backbone, cfg.weights)


def apply_start(model: SppClassifier, start: Backbone, where: str) -> str:
    """Copy START's trunk into MODEL, and its fc6/fc7 when they fit (else they stay seeded and a
    note says why); what MODEL took, for the run's log."""
    model.trunk.features.load_state_dict(start.trunk.features.state_dict())
    misfit = _head_misfit(start, model)
    if misfit is not None:
        log.warning("%s: fc6/fc7 start fresh: %s", where, misfit)
        return "trunk"
    model.head.load_state_dict({**model.head.state_dict(), **(start.head or {})})
    return "trunk, fc6 and fc7"


def _head_misfit(start: Backbone, model: SppClassifier) -> str | None:
    """Why START's fc6/fc7 cannot initialise MODEL's head, or None when they can."""
    if start.head is None:
        return "the checkpoint has none"
    if start.head_pyramid is None:
        return "the checkpoint does not say which pyramid its fc6 reads"
    if tuple(start.head_pyramid) != tuple(model.pyramid):
        return (
            f"its fc6 reads pyramid {_levels(start.head_pyramid)}, this run pools "
            f"{_levels(model.pyramid)} ; pass --pyramid {_levels(start.head_pyramid)} to use them"
        )
    width = model.head.fc7.out_features
    found = start.head["fc7.weight"].shape[0]
    if found != width:
        return f"they are {found} wide, --fc-dim is {width} ; pass --fc-dim {found} to use them"
    expected = model.head.state_dict()
    for key, value in start.head.items():
        if value.shape != expected[key].shape:
            wanted = tuple(expected[key].shape)
            return f"its {key} is {tuple(value.shape)}, the classifier's {wanted}"
    return None


def _levels(pyramid: Sequence[int]) -> str:
    return ",".join(map(str, pyramid))
