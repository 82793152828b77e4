"""Tests of ``sppdet.cache.atomic``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.atomic import atomic_output


def test_atomic_output_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("new and partial")
        raise RuntimeError
    assert target.read_text() == "old"
