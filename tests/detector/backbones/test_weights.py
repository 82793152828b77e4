"""Tests of ``sppdet.detector.backbones.weights``."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING
from sppdet.detector.core.errors import SppdetError


def test_torchvision_state_dict_file_for_alexnet(tmp_path):
    torch.manual_seed(3)
    model = torchvision.models.alexnet().eval()
    path = tmp_path / "alexnet-owt.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone("alexnet", str(path))
    assert backbone.preprocessing == TORCHVISION_PREPROCESSING
    assert backbone.head_pyramid == (6,)
    assert torch.equal(backbone.head["fc6.weight"], model.classifier[1].weight)
    assert torch.equal(backbone.head["fc7.bias"], model.classifier[4].bias)
    x = torch.randn(1, 3, 131, 157)
    with torch.inference_mode():
        assert torch.equal(backbone.trunk.eval()(x), model.features[:12](x))
    with pytest.raises(SppdetError, match="do not fit vgg16"):
        load_backbone("vgg16", str(path))


def test_imagenet_weights_offline_is_one_clear_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty hub cache
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(SppdetError) as err:
        load_backbone("alexnet", "imagenet")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "--weights PATH" in message
    assert "alexnet-owt-7be5be79.pth" in message
    with pytest.raises(SppdetError, match="no ZF-5 weights"):
        load_backbone("zf5", "imagenet")


def test_weights_ids_and_preprocessing_without_building():
    assert describe_weights("zf5", "random") == ("random:seed0", ZF5_PREPROCESSING)
    assert describe_weights("vgg16", "random") == ("random:seed0", TORCHVISION_PREPROCESSING)
    assert describe_weights("alexnet", "imagenet") == (
        "imagenet:AlexNet_Weights.IMAGENET1K_V1",
        TORCHVISION_PREPROCESSING,
    )
