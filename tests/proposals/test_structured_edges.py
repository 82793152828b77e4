"""Tests of ``sppdet.proposals.structured_edges`` (its maps drive EdgeBoxes in test_edgeboxes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.proposals.structured_edges import check_edge_model


def test_edge_model_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match="edge model not found"):
        check_edge_model(tmp_path / "none.yml.gz")
    garbage = tmp_path / "garbage.yml.gz"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(SppdetError, match="not a structured-edge model"):
        check_edge_model(garbage)
    no_trees = tmp_path / "other.yml"  # valid YAML that crashes OpenCV's loader (SIGFPE)
    no_trees.write_text("%YAML:1.0\n---\nfoo: 1\n")
    with pytest.raises(SppdetError, match=r"missing options\.stride") as info:
        check_edge_model(no_trees)
    assert "\n" not in str(info.value)
