"""Tests of ``sppdet.cache.workdir``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError


def test_workdir_models_and_settings(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    with pytest.raises(SppdetError, match="run `sppdet train-svm` first"):
        work.load_model("svm", made_by="sppdet train-svm")
    work.save_model("svm", {"w": np.arange(3).tolist(), "fingerprint": "abc"})
    assert work.load_model("svm", "sppdet train-svm")["fingerprint"] == "abc"
    fp = work.record("propose", "trainval", {"method": "ss-fast"})
    assert work.settings()["propose:trainval"]["fingerprint"] == fp
    work.model("bad").write_bytes(b"not a torch file")
    with pytest.raises(SppdetError, match="unreadable model"):
        work.load_model("bad", "sppdet finetune")


def test_record_writes_the_stage_split_keys_of_settings_json(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    propose = {"method": "ss-fast", "max_boxes": 2000}
    features = {"features": {"scales": [480, 576]}, "spp": {"pyramid": [1, 2, 3, 6]}}
    work.record("propose", "trainval", propose)
    work.record("cache-features", "test", features)
    work.record("propose", "test", {"method": "edgeboxes"})
    expected = {
        "propose:trainval": {"settings": propose, "fingerprint": fingerprint(propose)},
        "cache-features:test": {"settings": features, "fingerprint": fingerprint(features)},
        "propose:test": {
            "settings": {"method": "edgeboxes"},
            "fingerprint": fingerprint({"method": "edgeboxes"}),
        },
    }
    # The file's bytes: the format every earlier version wrote (sorted keys, 2-space indent).
    assert work.settings_path.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"


def test_recorded_reads_back_one_stage_and_split(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    assert work.recorded("propose", "trainval") is None and work.recorded_splits("propose") == []
    work.record("propose", "trainval", {"method": "ss-fast"})
    work.record("cache-features", "trainval", {"spp": {"pyramid": [1, 2]}})
    work.record("propose", "test", {"method": "ss-quality"})
    work.record("propose", "trainval", {"method": "edgeboxes"})  # a rerun replaces the entry
    assert work.recorded("propose", "trainval") == {"method": "edgeboxes"}
    assert work.recorded("propose", "test") == {"method": "ss-quality"}
    assert work.recorded("cache-features", "trainval") == {"spp": {"pyramid": [1, 2]}}
    assert work.recorded("cache-features", "test") is None
    assert work.recorded("detect", "trainval") is None
    assert work.recorded_splits("propose") == ["test", "trainval"]  # settings.json's order
    assert work.recorded_splits("cache-features") == ["trainval"]
    # A stage whose name starts like another's is not mixed up with it.
    assert work.recorded_splits("cache") == []
