"""Tests of ``sppdet.cache.workdir``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError


def test_workdir_models_and_settings(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    with pytest.raises(SppdetError, match="run `sppdet train-svm` first"):
        work.load_model("svm", made_by="sppdet train-svm")
    work.save_model("svm", {"w": np.arange(3).tolist(), "fingerprint": "abc"})
    assert work.load_model("svm", "sppdet train-svm")["fingerprint"] == "abc"
    fp = work.record_stage("propose", {"method": "ss-fast"})
    assert work.settings()["propose"]["fingerprint"] == fp
    work.model("bad").write_bytes(b"not a torch file")
    with pytest.raises(SppdetError, match="unreadable model"):
        work.load_model("bad", "sppdet finetune")
