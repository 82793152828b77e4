"""Tests of ``sppdet.detector.backbones.resnet50``: ResNet-50 cut after layer3.

The geometry is measured on the real module: a copy with the same convolutions and poolings made
linear and positive (all-equal conv weights, no BatchNorm or ReLU, average instead of max
pooling), so the gradient of one output cell is non-zero exactly on its receptive field,
shortcuts included.
"""

from __future__ import annotations

import copy
import math
import urllib.error
from functools import cache

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING
from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.spp.geometry import CellGeometry, boxes_to_cells, edge_shift

MEASURE_SIDE = 304  # input side: an interior cell's 267-pixel field fits unclipped
MEASURE_CELL = 9  # that cell, and its right neighbour


def resnet_side(side: int) -> int:
    """Map side from torchvision's layers: conv1 7/2 pad 3, maxpool 3/2 pad 1, then the 3x3
    stride-2 convs of layer2 and layer3 (pad 1): four times ceil(side / 2)."""
    for _ in range(4):
        side = (side - 1) // 2 + 1
    return side


def _linearised(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.ReLU)):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        elif isinstance(child, nn.Conv2d):
            with torch.no_grad():
                child.weight.fill_(1.0 / child.weight[0].numel())
        else:
            _linearised(child)


@cache
def measured_geometry() -> CellGeometry:
    """Stride, offset and receptive field of two neighbouring interior cells' gradients."""
    net = copy.deepcopy(build_trunk("resnet50").features)
    _linearised(net)
    net = net.double()
    x = torch.ones(2, 3, MEASURE_SIDE, MEASURE_SIDE, dtype=torch.float64, requires_grad=True)
    out = net(x)
    j = MEASURE_CELL
    (out[0, 0, j, j] + out[1, 0, j + 1, j + 1]).backward()  # one cell per batch item
    centres, fields = [], []
    for item in range(2):
        grad = x.grad[item].sum(0)
        columns = np.nonzero(grad.sum(0).numpy())[0]
        rows = np.nonzero(grad.sum(1).numpy())[0]
        assert np.array_equal(columns, rows)  # square field, same in both directions
        assert np.array_equal(columns, np.arange(columns[0], columns[-1] + 1))
        centres.append((columns[0] + columns[-1]) / 2)
        fields.append(len(columns))
    assert fields[0] == fields[1]
    stride = centres[1] - centres[0]
    return CellGeometry(int(stride), centres[0] - stride * j, fields[0])


def test_conv5_of_224_is_14x14x1024_and_other_sizes_follow_the_layers():
    trunk = build_trunk("resnet50").eval()
    with torch.inference_mode():
        assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 14, 14)
        for h, w in ((100, 161), (225, 97)):
            out = trunk(torch.randn(1, 3, h, w))
            assert out.shape == (1, 1024, resnet_side(h), resnet_side(w))
    assert resnet_side(224) == 14 and resnet_side(225) == math.ceil(225 / 16)
    assert trunk.out_channels == backbone_spec("resnet50").channels == 1024


def test_declared_geometry_is_the_measured_one():
    declared = backbone_spec("resnet50").geometry
    assert (declared.stride, declared.offset) == (16, 0.0)  # centre-padded layers: offset 0
    assert declared == measured_geometry()


def test_window_centre_maps_onto_the_cell_whose_field_is_centred_nearest():
    measured, declared = measured_geometry(), backbone_spec("resnet50").geometry
    rng = np.random.default_rng(4)
    x1 = rng.uniform(200, 600, 3000)
    w = np.exp(rng.uniform(np.log(40), np.log(500), 3000))  # wide: never degenerate
    boxes = np.stack([x1, x1, x1 + w, x1 + w], 1)
    cells = boxes_to_cells(boxes, 1.0, declared, 100, 100, edge_shift("released", declared))
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    all_cells = np.arange(100)
    nearest = np.abs(measured.centre(all_cells)[None] - centre[:, None]).min(1)
    lo, hi = cells[:, 0], cells[:, 2]
    middle = [np.floor((lo + hi) / 2), np.ceil((lo + hi) / 2)]
    got = np.minimum(*[np.abs(measured.centre(m) - centre) for m in middle])
    assert np.allclose(got, nearest)
    # A window centred on a cell's field centre maps symmetrically around that cell.
    k = np.arange(20, 30)
    on_centre = measured.centre(k)
    boxes = np.stack([on_centre - 70, on_centre - 30, on_centre + 70, on_centre + 30], 1)
    cells = boxes_to_cells(boxes, 1.0, declared, 100, 100, edge_shift("released", declared))
    assert np.array_equal((cells[:, 0] + cells[:, 2]) / 2, k)
    assert np.array_equal((cells[:, 1] + cells[:, 3]) / 2, k)


def test_torchvision_state_dict_file_loads_conv1_to_layer3(tmp_path):
    torch.manual_seed(6)
    model = torchvision.models.resnet50().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so loading them is visible
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet50-tv.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone("resnet50", str(path))
    assert backbone.preprocessing == TORCHVISION_PREPROCESSING
    assert backbone.head is None and backbone.head_pyramid is None  # no fc6/fc7 in a ResNet
    x = torch.randn(1, 3, 96, 112)
    with torch.inference_mode():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        want = model.layer3(model.layer2(model.layer1(stem)))
        assert torch.equal(backbone.trunk.eval()(x), want)
    with pytest.raises(SppdetError, match="do not fit alexnet"):
        load_backbone("alexnet", str(path))
    saved = save_backbone_checkpoint(
        tmp_path / "r.pt", "resnet50", backbone.trunk, backbone.preprocessing
    )
    again = load_backbone("resnet50", str(saved))
    for (k, v), (k2, v2) in zip(
        backbone.trunk.state_dict().items(), again.trunk.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


def test_imagenet_weights_go_through_torchvision_and_fail_offline_in_one_line(
    tmp_path, monkeypatch
):
    assert describe_weights("resnet50", "imagenet") == (
        "imagenet:ResNet50_Weights.IMAGENET1K_V1",
        TORCHVISION_PREPROCESSING,
    )

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty hub cache
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(SppdetError) as err:
        load_backbone("resnet50", "imagenet")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "--weights PATH" in message
    assert "resnet50-0676ba61.pth" in message
