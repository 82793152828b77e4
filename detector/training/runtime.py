"""Where a stage's numerics run, and the up-front warning when a stage will take long.

``Runtime`` is what the training and test stages share besides their settings: the device
(``--device``: every tensor a stage computes with lives there, the CPU being just one device),
the precision of the fc layers (``--precision``: fp32, or bf16/fp16 autocast) and the name of
the preset the settings come from, quoted when a stage warns that it is long. ``EtaCheck``
times a stage's first items (a short measured warm-up) and, once, logs a warning when the
estimate for the whole stage is over an hour: the ETA, the preset, and how to pick a shorter
run or a faster device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sppdet.detector.core.device import autocast, check_precision, resolve_device

log = logging.getLogger(__name__)

LONG_STAGE_SECONDS = 3600.0  # a stage estimated over this is announced up front
ETA_WARMUP_ITEMS = 3  # items timed before a stage's duration is estimated ...
ETA_WARMUP_SECONDS = 2.0  # ... and at least this long, so one-time costs weigh little


@dataclass(frozen=True)
class Runtime:
    """The device and precision a stage computes with, and the preset its settings come from."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    preset: str = "released"

    @classmethod
    def create(
        cls, device: str | None = None, precision: str | None = None, preset: str = "released"
    ) -> Runtime:
        """From the command-line values: DEVICE auto (default), cpu, cuda or cuda:N; PRECISION
        fp32 (default), bf16 or fp16."""
        return cls(resolve_device(device or "auto"), check_precision(precision or "fp32"), preset)

    def autocast(self) -> Any:
        """The fc layers' precision context on this device (fp32: none)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return autocast(self.device, self.precision)

    def describe(self) -> str:
        return f"{self.device}" + ("" if self.precision == "fp32" else f", {self.precision}")


class EtaCheck:
    """Times the first items of a stage of TOTAL items and warns once when the whole is long.

    ``advance(n)`` after each item; the estimate is made after ``ETA_WARMUP_ITEMS`` items and
    ``ETA_WARMUP_SECONDS``. ``estimate(seconds_left)`` gives the estimate directly, for a stage
    that measures its own warm-up (fine-tuning, whose rounds start with a pooling pass).
    """

    def __init__(self, stage: str, total: int, unit: str, runtime: Runtime, shorter: str) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.runtime, self.shorter = runtime, shorter
        self.done = 0
        self.seconds: float | None = None  # the estimate, once made
        self._start = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.seconds is not None or self.done >= self.total:
            return
        elapsed = time.perf_counter() - self._start
        if self.done >= ETA_WARMUP_ITEMS and elapsed >= ETA_WARMUP_SECONDS:
            self.estimate(elapsed / self.done * (self.total - self.done) + elapsed)

    def estimate(self, seconds: float) -> None:
        """Record the stage's estimated duration SECONDS; over an hour, say so (once)."""
        if self.seconds is not None:
            return
        self.seconds = seconds
        if seconds > LONG_STAGE_SECONDS:
            rate = self.total / seconds if seconds > 0 else float("inf")
            log.warning(
                "%s: about %s on %s with preset %s (%d %s at %.3g %s/s, timed on the first "
                "%d); for a shorter run pick another preset (--preset quick-cpu) or %s, or "
                "run on a GPU (--device cuda)",
                self.stage,
                format_duration(seconds),
                self.runtime.describe(),
                self.runtime.preset,
                self.total,
                self.unit,
                rate,
                self.unit,
                max(self.done, 1),
                self.shorter,
            )


@dataclass(frozen=True)
class PrecisionDrift:
    """How far mixed precision moves a stage's outputs (scores, logits) from fp32 on the same
    windows, as ``sppdet bench`` reports it."""

    max_abs: float
    mean_abs: float
    reference_std: float  # spread of the fp32 values: the scale the differences compare with
    same_argmax: float  # share of windows whose best column (class) is unchanged

    @classmethod
    def measure(cls, reference: torch.Tensor, mixed: torch.Tensor) -> PrecisionDrift:
        """Compare REFERENCE [N, K] (fp32) with MIXED [N, K]; empty inputs give zeros."""
        if reference.numel() == 0:
            return cls(0.0, 0.0, 0.0, 1.0)
        diff = (mixed.float() - reference.float()).abs()
        same = (mixed.argmax(1) == reference.argmax(1)).float().mean()
        return cls(
            float(diff.max()), float(diff.mean()), float(reference.float().std()), float(same)
        )

    def describe(self, precision: str, what: str) -> str:
        return (
            f"{precision} against fp32: {what} move by at most {self.max_abs:.3g} (mean "
            f"{self.mean_abs:.3g}, fp32 spread {self.reference_std:.3g}); the best class is "
            f"unchanged for {100 * self.same_argmax:.1f}% of the windows"
        )

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def precision_setting(runtime: Runtime) -> dict[str, str]:
    """What a model's fingerprint adds for the runtime: the precision when it is not fp32 (so
    fp32 models keep the fingerprints they always had)."""
    return {} if runtime.precision == "fp32" else {"precision": runtime.precision}


def format_duration(seconds: float) -> str:
    """'2 h 05 min', or '12 min' under an hour."""
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
