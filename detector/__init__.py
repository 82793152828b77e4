"""sppdet.detector: everything that is vision or learning (datasets, boxes, nets, SPP, heads).

The public Python API is ``Detector`` and ``Detections`` (``sppdet.detector.inference``):

    from sppdet.detector import Detector

    found = Detector.load("model.sppdet").predict("image.jpg")[0]

They are imported on first use (module ``__getattr__``), so that importing a light submodule such
as ``sppdet.detector.core.config``, or the CLI's ``--help``, does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sppdet.detector.inference.detections import Detections
    from sppdet.detector.inference.detector import Detector

# The public names, and the module each is imported from on first use.
_LAZY = {
    "Detector": "sppdet.detector.inference.detector",
    "Detections": "sppdet.detector.inference.detections",
}

__all__ = ["Detector", "Detections"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
