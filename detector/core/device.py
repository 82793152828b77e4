"""Where and in what precision the networks run: ``--device`` resolution (auto, cpu, cuda[:N]), the
channels-last input layout that matches a trunk put on a GPU by
``sppdet.detector.backbones.trunk.to_device``, and ``--precision`` autocast (fp32, bf16, fp16)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sppdet.detector.core.config import PRECISIONS
from sppdet.detector.core.errors import SppdetError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` or ``cuda:N`` without that GPU is a
    user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise SppdetError(f"unknown --device {name!r}: choose auto, cpu, cuda or cuda:N")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SppdetError(
                f"--device {name}: no CUDA device is available; use --device cpu or auto"
            )
        if index and int(index) >= count:
            raise SppdetError(
                f"--device {name}: this machine has {count} CUDA device(s); pick cuda:0 to "
                f"cuda:{count - 1}"
            )
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for DEVICE's queued work (GPUs run asynchronously), so that a timing is real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_input(x: torch.Tensor) -> torch.Tensor:
    """An input batch in the memory format ``to_device`` gave the trunk."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def autocast(device: torch.device, precision: str) -> Any:
    """The mixed-precision context of PRECISION on DEVICE: ``fp32`` runs in float32; ``bf16`` and
    ``fp16`` autocast the convolutions and matrix products (bf16 uses AMX/AVX-512 on recent CPUs;
    fp16 suits GPUs). Callers report how far the scores move: see ``sppdet bench``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def check_precision(precision: str) -> str:
    """PRECISION if it is one of PRECISIONS, else a one-line user error."""
    if precision not in PRECISIONS:
        raise SppdetError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    return precision
