"""Training you can watch from the command line: with logging as the CLI configures it, the
training's log lines reach stderr, and the reports are written."""

from __future__ import annotations

import csv
import shutil

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.heads.finetune import describe_metrics
from tests.detector.training.shared import CLASSES

load_commands()


def test_finetune_and_train_svm_log_to_stderr_and_write_their_reports(split, tmp_path, capsys):
    data, shared = split
    work = tmp_path / "work"
    shutil.copytree(shared.root, work)  # this test's models stay its own
    common = ["--data", str(data), "--work", str(work), "--classes", ",".join(CLASSES)]
    finetune = ["finetune", *common, "--preset", "quick-cpu", "--iterations", "3", "--fc-dim", "8"]
    assert run_app([*finetune, "--tensorboard", str(tmp_path / "tb")]) == 0
    err = capsys.readouterr().err
    with open(work / "reports" / "finetune.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))  # quick-cpu logs every 250: the last batch only
    assert row["iteration"] == "3"
    # heads.finetune's log line, through the handler the CLI installs on the sppdet logger
    metrics = {k: float(v) for k, v in row.items() if k != "iteration"}
    assert f"iteration 3: {describe_metrics(metrics)}" in err
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    svm = ["train-svm", *common, "--layer", "pool5", "--no-finetuned"]
    assert run_app(svm) == 0
    err = capsys.readouterr().err
    with open(work / "reports" / "svm.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == list(CLASSES)
    for r in rows:  # the report's log line: the CLI's own summary words it otherwise
        assert (
            f"train-svm {r['class']}: {r['positives']} positives, {r['hard_negatives']} hard "
            f"negatives kept, {r['retrains']} retrains"
        ) in err
