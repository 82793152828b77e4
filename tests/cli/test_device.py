"""``--device`` on every command that runs a network after the cache: finetune, train-svm,
train-bbox, detect, run and demo.

``--device meta`` is made to resolve to torch's meta device (shapes, no data): a command that
threads the device through to its stage fails at the stage's first look at the numbers, one
that silently ignored it would finish on the CPU and pass; so would a command that ignored the
option. The trunk of ``run`` and ``demo`` stays on the CPU here, so that their cache is built
and the failure comes from the stages after it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core import device as core_device
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features import writer
from sppdet.detector.training import runtime
from tests.detector.training.shared import make_pool5_work

load_commands()


@pytest.fixture
def meta_device(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``--device meta`` resolves to the meta device for the stages; the trunk that builds a
    cache always runs on the CPU. Returns the device names the stages asked for."""
    asked: list[str] = []

    def resolve(name: str) -> torch.device:
        asked.append(name)
        return torch.device("meta") if name == "meta" else core_device.resolve_device(name)

    monkeypatch.setattr(runtime, "resolve_device", resolve)
    monkeypatch.setattr(writer, "resolve_device", lambda name: torch.device("cpu"))
    return asked


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    """A split with its stores and pool5 SVMs, so that detect has a model to score with."""
    return make_pool5_work(tmp_path_factory.mktemp("device"))


def _ran_on_meta(argv: list[str], asked: list[str]) -> None:
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        run_app([*argv, "--device", "meta"])
    assert asked and set(asked) == {"meta"}


@pytest.mark.parametrize(
    "command",
    [
        ["finetune", "--iterations", "4", "--fc-dim", "16"],
        ["train-svm", "--layer", "fc7", "--no-finetuned", "--force"],
        ["train-bbox", "--force"],
        ["detect", "--split", "test", "--no-bbox", "--force"],
    ],
    ids=["finetune", "train-svm", "train-bbox", "detect"],
)
def test_stage_commands_run_on_the_device_asked(trained, meta_device, command) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    _ran_on_meta([*command, "--data", str(data), "--work", str(work.root)], meta_device)


def test_run_and_demo_run_their_stages_on_the_device_asked(tmp_path, meta_device) -> None:  # type: ignore[no-untyped-def]
    data = make_synthetic_voc(tmp_path / "data", num_images=6, seed=2, image_size=(80, 110))
    work = tmp_path / "work"
    run = ["run", "--data", str(data), "--work", str(work), "--preset", "quick-cpu"]
    _ran_on_meta(run, meta_device)
    assert WorkDir.at(work).features("test").is_dir()  # the cache was built, on the CPU
    meta_device.clear()
    _ran_on_meta(["demo", "--out", str(tmp_path / "demo"), "--num-images", "4"], meta_device)


def test_combine_runs_its_nms_on_the_device_asked(trained, meta_device, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    first = tmp_path / "first"
    shutil.copytree(work.root, first)
    detect = ["detect", "--data", str(data), "--split", "test", "--no-bbox", "--force"]
    assert run_app([*detect, "--work", str(first), "--device", "cpu"]) == 0
    second = tmp_path / "second"
    shutil.copytree(first, second)  # two models with the same classes and candidates
    meta_device.clear()
    combine = ["combine", "--work", str(first), "--work", str(second), "--data", str(data)]
    _ran_on_meta([*combine, "--out", str(tmp_path / "combined")], meta_device)


def test_an_unknown_or_absent_device_is_a_one_line_error(trained, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    argv = ["train-bbox", "--data", str(data), "--work", str(work.root)]
    assert run_app([*argv, "--device", "tpu"]) == 2
    assert "unknown --device 'tpu': choose auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_app([*argv, "--device", "cuda:1"]) == 2
        assert "--device cuda:1: no CUDA device" in capsys.readouterr().err
