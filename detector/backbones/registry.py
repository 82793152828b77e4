"""The backbone registry: one frozen ``BackboneSpec`` per conv trunk, declared in the trunk's own
module (``zf5``, ``alexnet``, ``vgg16``, ``resnet50`` in this package) and looked up by name with
``backbone_spec``.

A spec holds everything the rest of sppdet needs to know about a trunk: how to build it with
random weights, its conv5 channels, the preprocessing its random weights assume, the input side
the network was designed for (R-CNN warps windows to it), and the (kernel, stride, padding) of
each layer along its main path, from which the conv5 cell geometry follows
(``sppdet.detector.spp.geometry.layer_geometry``). The geometry is declared, never read off the
modules: a residual trunk's shortcut convolutions run beside the main path and must not count as
extra layers. A trunk cut out of a torchvision ImageNet classifier also declares that classifier
(``TorchvisionSource``): the weights enum behind ``--weights imagenet``, which of the classifier's
state-dict entries are the trunk's, which Linear layers serve as fc6/fc7, and the pyramid that
reproduces fc6's input.

Adding a backbone is one module declaring ``SPEC`` plus its entry in ``_declared_specs``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torchvision
from torch import nn

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING, Preprocessing
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.spp.geometry import CellGeometry, layer_geometry

Layer = tuple[int, int, int]  # (kernel, stride, padding) of one convolution or pooling layer


def kaiming_init_(features: nn.Sequential) -> nn.Sequential:
    """FEATURES' convolutions re-drawn Kaiming-normal (for ReLU) with zero biases, in layer order
    from the global generator: the random start of the trunks defined here (not torchvision's)."""
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return features


@dataclass(frozen=True)
class TorchvisionSource:
    """Where a trunk sits inside one of torchvision's ImageNet classifiers."""

    model: str  # builder in torchvision.models, e.g. "alexnet"
    weights: str  # --weights imagenet: "<enum>.<member>" in torchvision.models
    root: str  # submodule the trunk is cut from: "features", or "" for the model itself
    children: tuple[str, ...]  # the root's children the trunk keeps, in order
    fc6: str | None = None  # state-dict prefixes of the Linear layers reused as fc6 and fc7
    fc7: str | None = None
    head_pyramid: tuple[int, ...] | None = None  # the pyramid whose pooled map fc6 was trained on
    preprocessing: Preprocessing = TORCHVISION_PREPROCESSING  # what the ImageNet weights expect

    def random_trunk(self) -> nn.Sequential:
        """The trunk of a freshly built classifier, initialised by torchvision from the global
        generator (the caller seeds it). The whole classifier is built so that the random draws,
        and therefore the trunk's weights, are exactly those of torchvision's model."""
        model = getattr(torchvision.models, self.model)()
        found = dict(model.get_submodule(self.root).named_children())
        return nn.Sequential(OrderedDict((name, found[name]) for name in self.children))

    def weights_enum(self) -> Any:
        """The torchvision weights enum member named by ``weights``."""
        enum, member = self.weights.split(".")
        return getattr(getattr(torchvision.models, enum), member)

    def trunk_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The trunk's entries of a classifier state dict, keyed as in the trunk."""
        prefix = f"{self.root}." if self.root else ""
        trunk = {}
        for key, value in state.items():
            key = str(key)
            if key.startswith(prefix) and key[len(prefix) :].split(".")[0] in self.children:
                trunk[key[len(prefix) :]] = value
        return trunk

    def head_state(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        """fc6/fc7 of a classifier state dict as ``heads.fc.FcHead`` names them, or None unless the
        classifier has both layers and the state holds all four tensors."""
        if self.fc6 is None or self.fc7 is None:
            return None
        head = {
            f"{name}.{part}": state[f"{prefix}.{part}"]
            for name, prefix in (("fc6", self.fc6), ("fc7", self.fc7))
            for part in ("weight", "bias")
            if f"{prefix}.{part}" in state
        }
        return head if len(head) == 4 else None


@dataclass(frozen=True)
class BackboneSpec:
    """One conv trunk, as the rest of sppdet sees it (module doc)."""

    name: str  # the --backbone value, also a checkpoint's "arch"
    title: str  # the network's usual name, for messages
    description: str  # what the trunk keeps, for --help
    build_features: Callable[[], nn.Sequential]  # random weights drawn from the global generator
    layers: tuple[Layer, ...]  # main path, input first, up to the last conv's ReLU
    channels: int  # conv5 channels
    preprocessing: Preprocessing  # what the random weights assume (a checkpoint records its own)
    input_size: int  # the input side the network was designed for
    torchvision: TorchvisionSource | None = None  # None: no torchvision classifier holds it

    @property
    def geometry(self) -> CellGeometry:
        """Where conv5 cells sit in the input image."""
        return layer_geometry(self.layers)


@cache
def _declared_specs() -> dict[str, BackboneSpec]:
    # Imported here, not at the top: each backbone module imports this one for BackboneSpec.
    from sppdet.detector.backbones import alexnet, caffe_alexnet, resnet50, vgg16, zf5

    # The order --help lists them in.
    specs = (zf5.SPEC, alexnet.SPEC, vgg16.SPEC, resnet50.SPEC, caffe_alexnet.SPEC)
    return {spec.name: spec for spec in specs}


def backbone_specs() -> tuple[BackboneSpec, ...]:
    return tuple(_declared_specs().values())


def backbone_names() -> tuple[str, ...]:
    return tuple(_declared_specs())


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone NAME; an unknown name is a one-line user error listing the known."""
    spec = _declared_specs().get(name)
    if spec is None:
        raise SppdetError(f"unknown backbone {name!r}: choose one of {', '.join(backbone_names())}")
    return spec
