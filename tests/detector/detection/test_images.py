"""``detect --image``: the proposal and feature settings rebuilt from what the stages recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FeatureConfig, ProposalConfig, SppConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.images import ImageDetection, feature_configs, proposal_config
from sppdet.proposals.methods import method_params


def _record_features(work: WorkDir, features: dict, spp: dict) -> None:
    work.record("cache-features", "trainval", {"features": features, "spp": spp, "store": {}})


def test_settings_come_back_as_they_were_recorded(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    proposals = ProposalConfig(method="edgeboxes", max_boxes=300, edge_sigmas=(1.0, 2.0))
    features = FeatureConfig(scales=(160, 224), dtype="float32", flip=True)
    spp = SppConfig(pyramid=(1, 2, 4), window_mapping="paper")
    # What ``propose`` records: the method's settings and the store's bookkeeping keys.
    work.record("propose", "trainval", method_params(proposals))
    _record_features(work, as_dict(features), as_dict(spp))
    rebuilt = proposal_config(work)
    assert (rebuilt.method, rebuilt.max_boxes) == ("edgeboxes", 300)
    assert rebuilt.edge_sigmas == (1.0, 2.0)
    assert method_params(rebuilt) == method_params(proposals)
    assert feature_configs(work) == (features, spp)


def test_unknown_recorded_settings_are_refused_not_dropped(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    _record_features(work, {**as_dict(FeatureConfig()), "stride": 16}, as_dict(SppConfig()))
    with pytest.raises(SppdetError) as error:
        feature_configs(work)
    message = str(error.value)
    assert message.startswith(f"{work.settings_path} (cache-features on trainval): ")
    assert "unknown FeatureConfig settings stride; rerun `sppdet cache-features`" in message
    assert "\n" not in message
    _record_features(work, as_dict(FeatureConfig()), {**as_dict(SppConfig()), "levels": 4})
    with pytest.raises(SppdetError, match="unknown SppConfig settings levels"):
        feature_configs(work)
    work.record("propose", "trainval", {**method_params(ProposalConfig()), "ss_colour": "hsv"})
    with pytest.raises(SppdetError, match="unknown ProposalConfig settings ss_colour; rerun"):
        proposal_config(work)


def test_missing_stage_and_structured_edges_are_refused(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    with pytest.raises(SppdetError, match="no `sppdet propose` run recorded; train first"):
        proposal_config(work)
    params = {**method_params(ProposalConfig(method="edgeboxes")), "edges": "structured:ab12"}
    work.record("propose", "trainval", params)
    with pytest.raises(SppdetError, match=r"structured edge model \(structured:ab12\)"):
        proposal_config(work)


def test_image_detection_json_keeps_the_printed_keys() -> None:
    found = ImageDetection("cat", 0.5, [1.0, 2.0, 30.0, 40.0])
    assert found.to_json() == {"class": "cat", "score": 0.5, "box": [1.0, 2.0, 30.0, 40.0]}
