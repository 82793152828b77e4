"""How image pixels become network input: ``Preprocessing`` (per-channel mean and std, channel
order, pixel range), recorded in checkpoints and fingerprints as a plain dict, and torchvision's
ImageNet preprocessing, the one its classifiers' weights expect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sppdet.detector.core.errors import SppdetError


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become network input: x = (pixel [in pixel_range] - mean) / std, per channel,
    with channels in ``channel_order`` (mean and std are listed in that order)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" | "BGR"
    pixel_range: float  # 255.0: pixels 0..255; 1.0: pixels 0..1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "channel_order": self.channel_order,
            "pixel_range": float(self.pixel_range),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "checkpoint") -> Preprocessing:
        try:
            mean = tuple(float(v) for v in obj["mean"])
            std = tuple(float(v) for v in obj["std"])
            order = str(obj["channel_order"]).upper()
            pixel_range = float(obj["pixel_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SppdetError(f"{where}: malformed preprocessing record ({exc!r})") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise SppdetError(f"{where}: preprocessing needs 3 means and 3 positive stds")
        if order not in ("RGB", "BGR") or pixel_range not in (1.0, 255.0):
            raise SppdetError(
                f"{where}: preprocessing channel_order must be RGB or BGR and pixel_range 1 or "
                f"255, got {order!r} and {pixel_range}"
            )
        return cls(mean, std, order, pixel_range)  # type: ignore[arg-type]

    def __call__(self, image: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"):
        """uint8 RGB [H, W, 3] (numpy or tensor) -> float32 network input [1, 3, H, W]."""
        x = torch.as_tensor(image).to(device, non_blocking=True)
        x = x.permute(2, 0, 1).to(torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(0)
        if self.pixel_range == 1.0:
            x = x / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return ((x - mean) / std)[None]


# torchvision's ImageNet classifiers: RGB in 0-1, per-channel mean and std.
TORCHVISION_PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB", 1.0)
