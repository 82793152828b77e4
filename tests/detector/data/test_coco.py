"""Tests of ``sppdet.detector.data.coco``."""

from __future__ import annotations

import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import load_coco


def test_coco_reader_bad_files(tmp_path):
    with pytest.raises(SppdetError, match="COCO annotation file not found"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SppdetError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")
