"""Tests of ``sppdet.detector.backbones.registry``: the lookup, and that every declaration agrees
with the network it describes (layers, channels, torchvision keys and weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sppdet.detector.backbones.registry import backbone_names, backbone_spec, backbone_specs
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.core.errors import SppdetError

# Trunks whose modules are one chain of layers.
SEQUENTIAL = ("zf5", "alexnet", "vgg16", "caffe-alexnet")


def square(value: int | tuple[int, ...]) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    assert len(set(values)) == 1, f"non-square {values}"
    return values[0]


def kernel_stride_pad(layer: nn.Module) -> tuple[int, int, int]:
    return square(layer.kernel_size), square(layer.stride), square(layer.padding)


def test_unknown_backbone_is_one_line_listing_the_known_ones():
    with pytest.raises(SppdetError) as err:
        backbone_spec("zf9")
    message = str(err.value)
    assert "\n" not in message and "unknown backbone 'zf9'" in message
    assert all(name in message for name in ("zf5", "alexnet", "vgg16", "resnet50", "caffe-alexnet"))


def test_lookup_by_name():
    assert backbone_names() == ("zf5", "alexnet", "vgg16", "resnet50", "caffe-alexnet")
    assert [spec.name for spec in backbone_specs()] == list(backbone_names())
    assert all(backbone_spec(name).name == name for name in backbone_names())


@pytest.mark.parametrize("arch", SEQUENTIAL)
def test_declared_layers_are_the_convolutions_and_poolings_of_the_real_trunk(arch):
    features = build_trunk(arch).features
    found = [
        kernel_stride_pad(layer)
        for layer in features
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d))
    ]
    assert all(square(m.dilation) == 1 for m in features if isinstance(m, nn.Conv2d))
    assert tuple(found) == backbone_spec(arch).layers


def test_declared_resnet50_layers_are_its_stem_and_bottleneck_main_paths():
    features = build_trunk("resnet50").features
    found = [kernel_stride_pad(features.conv1), kernel_stride_pad(features.maxpool)]
    for stage in (features.layer1, features.layer2, features.layer3):
        for block in stage:
            found += [kernel_stride_pad(c) for c in (block.conv1, block.conv2, block.conv3)]
            if block.downsample is not None:  # the shortcut: a 1x1 conv with the block's stride
                shortcut = kernel_stride_pad(block.downsample[0])
                assert shortcut == (1, square(block.conv2.stride), 0)
    assert tuple(found) == backbone_spec("resnet50").layers


@pytest.mark.parametrize("arch", backbone_names())
def test_declared_channels_are_the_trunk_output(arch):
    trunk = build_trunk(arch).eval()
    with torch.inference_mode():
        out = trunk(torch.randn(1, 3, 64, 80))
    assert out.shape[1] == backbone_spec(arch).channels == trunk.out_channels


@pytest.mark.parametrize("arch", backbone_names())
def test_random_builds_are_seeded_and_leave_the_global_generator_alone(arch):
    before = torch.random.get_rng_state()
    first, again, other = build_trunk(arch, 0), build_trunk(arch, 0), build_trunk(arch, 1)
    assert torch.equal(torch.random.get_rng_state(), before)
    weights = [t.state_dict() for t in (first, again, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.parametrize("arch", [s.name for s in backbone_specs() if s.torchvision is not None])
def test_torchvision_declarations_match_the_classifier(arch):
    source = backbone_spec(arch).torchvision
    assert repr(source.weights_enum()) == source.weights  # the weights_id fingerprints use
    classifier = getattr(torchvision.models, source.model)()
    state = classifier.state_dict()
    assert set(source.trunk_state(state)) == set(build_trunk(arch).features.state_dict())
    head = source.head_state(state)
    if source.fc6 is None:
        assert head is None
    else:
        fc6, fc7 = classifier.get_submodule(source.fc6), classifier.get_submodule(source.fc7)
        assert isinstance(fc6, nn.Linear) and isinstance(fc7, nn.Linear)
        assert torch.equal(head["fc6.weight"], fc6.weight)
        assert torch.equal(head["fc7.bias"], fc7.bias)
        side = source.head_pyramid[0]  # fc6 reads the trunk's channels on a side x side map
        assert fc6.in_features == backbone_spec(arch).channels * side * side
