"""``sppdet.detector`` exports ``Detector`` and ``Detections`` without importing torch early."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sppdet.detector

LAZY_IMPORT = """
import sys
import sppdet.detector, sppdet.detector.core.config
assert "torch" not in sys.modules, "torch imported by the package itself"
from sppdet.detector import Detections, Detector
assert "torch" in sys.modules
print(Detector.__module__, Detections.__module__)
"""


def test_the_api_is_imported_on_first_use() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LAZY_IMPORT], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "sppdet.detector.inference.detector",
        "sppdet.detector.inference.detections",
    ]


def test_other_names_are_attribute_errors() -> None:
    assert {"Detector", "Detections"} <= set(dir(sppdet.detector))
    with pytest.raises(AttributeError, match="has no attribute 'Detecter'"):
        sppdet.detector.Detecter  # noqa: B018 - the lookup is the test
