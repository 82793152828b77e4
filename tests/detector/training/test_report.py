"""Training you can watch: WORK/reports/finetune.csv and svm.csv, and the TensorBoard scalars,
against the training's own history and statistics, through an interrupt and a resume."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FinetuneConfig, SvmConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.training.finetune import FinetuneResult, run_finetune
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.report import MetricsLog, describe_svm
from sppdet.detector.training.svm import SvmResult, run_train_svm
from tests.detector.training.shared import CLASSES

# One history row per batch; checkpoints at round boundaries 3+ batches apart; lr drops at 4.
CFG = FinetuneConfig(
    iterations=12, lr_steps=(4,), batch_size=16, fc_dim=32, checkpoint_every=3, log_every=1,
    images_per_round=2,
)  # fmt: skip
INTERRUPT_AT = 10  # the row after which the first run stops


@pytest.fixture
def work(split, tmp_path) -> tuple[Path, WorkDir]:  # type: ignore[no-untyped-def]
    """A copy of the package's split and stores: this test's models and reports stay its own."""
    data, shared = split
    shutil.copytree(shared.root, tmp_path / "work")
    return data, WorkDir.at(tmp_path / "work")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    lines = path.read_text().splitlines()
    with open(path, newline="") as handle:
        return lines, list(csv.DictReader(handle))


def test_metrics_log_writes_one_header_and_exact_numbers(tmp_path):
    log = MetricsLog(WorkDir.at(tmp_path), "t", step="step")
    log.start([{"step": 1, "loss": 0.1}])
    log.add({"step": 2, "loss": 1 / 3})
    lines, rows = read_csv(tmp_path / "reports" / "t.csv")
    assert lines[0] == "step,loss" and len(lines) == 3
    assert [float(r["loss"]) for r in rows] == [0.1, 1 / 3]  # repr: the floats come back
    with pytest.raises(ValueError, match="other columns"):
        log.add({"step": 3, "other": 1.0})
    log.start()  # a new run: the old rows go, the first new row brings the header
    log.add({"step": 1, "loss": 0.5})
    assert read_csv(tmp_path / "reports" / "t.csv")[0] == ["step,loss", "1,0.5"]


def test_finetune_csv_and_tensorboard_hold_the_history_through_a_resume(work, monkeypatch):
    data, workdir = work
    tensorboard = workdir.root / "tb"
    add = MetricsLog.add

    def interrupting(self, row):  # type: ignore[no-untyped-def]
        add(self, row)
        if row["iteration"] == INTERRUPT_AT:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLog, "add", interrupting)
    with pytest.raises(KeyboardInterrupt):
        inputs = open_split(workdir, data, "trainval", CLASSES)
        run_finetune(workdir, inputs, CFG, force=True, tensorboard=tensorboard)
    monkeypatch.setattr(MetricsLog, "add", add)
    checkpoint = workdir.load_model("finetune-partial", "sppdet finetune")["iteration"]
    _, before = read_csv(workdir.report("finetune.csv"))
    # the interrupted run logged rows past its checkpoint: a resume must not repeat them
    assert 0 < checkpoint < INTERRUPT_AT and len(before) == INTERRUPT_AT

    result = run_finetune(
        workdir, open_split(workdir, data, "trainval", CLASSES), CFG, tensorboard=tensorboard
    )
    assert isinstance(result, FinetuneResult)
    lines, rows = read_csv(workdir.report("finetune.csv"))
    assert lines[0] == "iteration,lr,train_loss,train_fg_accuracy"  # once: no repeated header
    assert [int(r["iteration"]) for r in rows] == list(range(1, CFG.iterations + 1))
    assert [{k: float(v) for k, v in r.items()} for r in rows] == result.history
    # lr: the rate of the row's last batch, base_lr until the drop at iteration index 4
    assert [float(r["lr"]) for r in rows] == [
        CFG.base_lr * CFG.lr_gamma ** (i - 1 >= 4) for i in range(1, CFG.iterations + 1)
    ]
    scalars = EventAccumulator(str(tensorboard))
    scalars.Reload()  # drops the interrupted run's events after the checkpoint (purge_step)
    for key in ("lr", "train_loss", "train_fg_accuracy"):
        events = scalars.Scalars(f"finetune/{key}")
        assert [e.step for e in events] == list(range(1, CFG.iterations + 1))
        # TensorBoard keeps float32
        expected = np.array([h[key] for h in result.history], np.float32)
        np.testing.assert_array_equal(np.array([e.value for e in events], np.float32), expected)


def test_train_svm_csv_holds_each_class_statistics(work):
    data, workdir = work
    inputs = open_split(workdir, data, "trainval", CLASSES)
    cfg = SvmConfig(layer="pool5", norm_sample_windows=500, retrain_every=200)
    result = run_train_svm(workdir, inputs, cfg, finetuned=False, tensorboard=workdir.root / "tb")
    assert isinstance(result, SvmResult)
    lines, rows = read_csv(workdir.report("svm.csv"))
    assert lines[0].startswith("class,positives,hard_negatives,retrains")
    assert [r["class"] for r in rows] == list(CLASSES)
    for k, row in enumerate(rows):
        stats = result.stats[row["class"]]
        boxes = sum(int((r.labels == k).sum()) for r in inputs.dataset.records)
        assert int(row["positives"]) == boxes  # the class's ground-truth boxes: its positives
        assert int(row["hard_negatives"]) == stats["cached_negatives"] > 0
        assert int(row["retrains"]) == stats["retrains"] >= 1
    scalars = EventAccumulator(str(workdir.root / "tb"))
    scalars.Reload()
    assert f"svm/{CLASSES[0]}/positives" in scalars.Tags()["scalars"]


def test_svm_log_line():
    row = {"class": "cat", "positives": 12, "hard_negatives": 340, "retrains": 2}
    assert describe_svm(row) == "cat: 12 positives, 340 hard negatives kept, 2 retrains"


def test_a_missing_tensorboard_package_is_refused_before_training(work, monkeypatch):
    data, workdir = work
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    inputs = open_split(workdir, data, "trainval", CLASSES)
    csv = workdir.report("finetune.csv")
    before = csv.read_bytes() if csv.exists() else None  # the module's work folder is shared
    with pytest.raises(SppdetError) as caught:
        run_finetune(workdir, inputs, CFG, tensorboard=workdir.root / "tb")
    assert str(caught.value) == (
        f"--tensorboard {workdir.root / 'tb'}: the tensorboard package is not installed ; "
        "pip install 'sppdet[tensorboard]'"
    )
    assert (csv.read_bytes() if csv.exists() else None) == before
    assert not workdir.model("finetune-partial").exists()
