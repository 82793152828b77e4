"""Tests of ``sppdet.detector.backbones.checkpoint``: the backbone checkpoint format."""

from __future__ import annotations

import pytest
import torch

from sppdet.detector.backbones.checkpoint import read_checkpoint, save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING
from sppdet.detector.core.errors import SppdetError


def test_checkpoint_round_trip(tmp_path):
    trunk = build_trunk("zf5")
    with torch.no_grad():
        trunk.features.conv1.weight.mul_(3.0)  # distinguishable from the random init
    width = 8  # a narrow head keeps the file small; the format does not depend on it
    head = {
        "fc6.weight": torch.randn(width, 256 * 50),
        "fc6.bias": torch.randn(width),
        "fc7.weight": torch.randn(width, width),
        "fc7.bias": torch.randn(width),
    }
    pre = Preprocessing((100.0, 110.0, 120.0), (2.0, 2.0, 2.0), "BGR", 255.0)
    path = save_backbone_checkpoint(
        tmp_path / "zf5.pt", "zf5", trunk, pre, head=head, head_pyramid=(1, 2, 3, 6), source="test"
    )
    assert not list(tmp_path.glob("*.tmp-*"))
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"], raw["arch"]) == ("sppdet-backbone", 1, "zf5")
    backbone = load_backbone("zf5", str(path))
    for (k, v), (k2, v2) in zip(
        trunk.state_dict().items(), backbone.trunk.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    assert backbone.preprocessing == pre and backbone.source == "test"
    assert backbone.head_pyramid == (1, 2, 3, 6)
    assert backbone.weights_id.startswith("file:")
    assert set(backbone.head_state((1, 2, 3, 6))) == set(head)
    assert set(backbone.head_state((6,))) == {"fc7.weight", "fc7.bias"}  # fc6 does not fit
    assert torch.equal(backbone.head_state((1, 2, 3, 6))["fc6.bias"], head["fc6.bias"])


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"not a torch file", "not a readable"), ("wrong-version", "version 7")],
)
def test_bad_weights_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content == "wrong-version":
        save_backbone_checkpoint(path, "zf5", build_trunk("zf5"), ZF5_PREPROCESSING)
        payload = torch.load(path, weights_only=True)
        payload["version"] = 7
        torch.save(payload, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SppdetError, match=message) as err:
        load_backbone("zf5", str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_checkpoint_for_another_arch_is_refused(tmp_path):
    path = save_backbone_checkpoint(tmp_path / "z.pt", "zf5", build_trunk("zf5"), ZF5_PREPROCESSING)
    with pytest.raises(SppdetError, match="holds zf5 weights, not alexnet"):
        read_checkpoint(path, "alexnet")
