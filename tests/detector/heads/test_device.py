"""Fine-tuning on a device: the loop moves the head to the device it is given and computes there.

``meta`` tensors have shapes but no data, so a loop that keeps every tensor on the meta device
runs to the end, while one that left the head (or the targets) on the CPU fails on mixing
devices: the test fails if ``train`` ignores its ``device``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import TrainState, WindowTable, train
from tests.detector.heads.test_finetune import NUM_CLASSES, _cfg, _proposals, _records

META = torch.device("meta")


class MetaPooler:
    """Pooled features of the right shape on the meta device (where a GPU cache would put
    them), recording the dtypes asked for."""

    num_scales = 2
    has_flip = False
    dim = NUM_CLASSES + 3

    def __init__(self) -> None:
        self.calls = 0

    def pooled(self, image_id, boxes, scales, flipped, dtype=torch.float32):  # type: ignore[no-untyped-def]
        self.calls += 1
        return torch.empty(len(boxes), self.dim, dtype=dtype, device=META)


def _meta_run(device: torch.device) -> tuple[FcHead, TrainState, MetaPooler]:
    records = _records(8)  # no --holdout: no held-out sample, whose metrics need data
    cfg = dataclasses.replace(_cfg(), iterations=7, checkpoint_every=1000, log_every=1000)
    table = WindowTable.build(records, _proposals(records), NUM_CLASSES, cfg)
    head = FcHead(MetaPooler.dim, 16, NUM_CLASSES + 1, dropout=0.5)
    pooler = MetaPooler()
    state = train(
        head, pooler, table, cfg, TrainState(0, 0, []), None, lambda *_: None, device=device
    )
    return head, state, pooler


def test_training_runs_where_it_is_told() -> None:
    head, state, pooler = _meta_run(META)
    assert state.iteration == 7 and pooler.calls > 0
    assert {p.device.type for p in head.parameters()} == {"meta"}
    assert head.input_scale.device.type == "meta"


def test_training_that_ignores_the_device_fails() -> None:
    # The same features on the meta device with the head left on the CPU: what a loop that
    # dropped its device would do. It must not pass silently.
    with pytest.raises((RuntimeError, NotImplementedError)):
        _meta_run(torch.device("cpu"))
