"""Tests of ``sppdet.cache.workdir``."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError


def test_workdir_models_and_settings(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    with pytest.raises(SppdetError, match="run `sppdet train-svm` first"):
        work.load_model("svm", made_by="sppdet train-svm")
    work.save_model("svm", {"w": np.arange(3).tolist(), "fingerprint": "abc"})
    assert work.load_model("svm", "sppdet train-svm")["fingerprint"] == "abc"
    fp = work.record("propose", "trainval", {"method": "ss-fast"})
    assert work.settings()["propose:trainval"]["fingerprint"] == fp
    work.model("bad").write_bytes(b"not a torch file")
    with pytest.raises(
        SppdetError, match=r"not a readable model file .* ; rerun `sppdet finetune`"
    ):
        work.load_model("bad", "sppdet finetune")


class _RunsCode:  # pickled by reference to a global: a model file that would run code
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("true",))


def test_a_model_file_holding_code_is_named_as_such_and_not_run(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    work.model("svm").parent.mkdir(parents=True)
    torch.save({"w": _RunsCode()}, work.model("svm"))
    with pytest.raises(SppdetError) as caught:
        work.load_model("svm", "sppdet train-svm")
    message = str(caught.value)
    assert "holds code (a pickled global posix.system)" in message
    assert message.endswith("; rerun `sppdet train-svm`") and "\n" not in message
    assert "weights_only" not in message  # torch's advice to turn the safe loader off is dropped


def test_a_model_write_on_a_full_disk_is_one_line_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*_: object, **__: object) -> None:  # what torch raises when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    work = WorkDir.at(tmp_path)
    monkeypatch.setattr(torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(SppdetError, match=r"svm\.pt: no space left on device ; "):
        work.save_model("svm", {"w": [1]})
    assert list(work.model("svm").parent.iterdir()) == []  # the temporary is gone too


def _record_many(root: str, stage: str) -> None:
    work = WorkDir.at(root)
    for i in range(20):
        work.record(stage, f"split{i}", {"i": i})


def test_stages_recording_at_once_keep_every_entry(tmp_path: Path) -> None:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_record_many, [str(tmp_path)] * 2, ["propose", "cache-features"]))
    keys = set(WorkDir.at(tmp_path).settings())
    assert keys == {f"{s}:split{i}" for s in ("propose", "cache-features") for i in range(20)}


def test_record_writes_the_stage_split_keys_of_settings_json(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    propose = {"method": "ss-fast", "max_boxes": 2000}
    features = {"features": {"scales": [480, 576]}, "spp": {"pyramid": [1, 2, 3, 6]}}
    work.record("propose", "trainval", propose)
    work.record("cache-features", "test", features)
    work.record("propose", "test", {"method": "edgeboxes"})
    expected = {
        "propose:trainval": {"settings": propose, "fingerprint": fingerprint(propose)},
        "cache-features:test": {"settings": features, "fingerprint": fingerprint(features)},
        "propose:test": {
            "settings": {"method": "edgeboxes"},
            "fingerprint": fingerprint({"method": "edgeboxes"}),
        },
    }
    # The file's bytes: the format every earlier version wrote (sorted keys, 2-space indent).
    assert work.settings_path.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"


def test_recorded_reads_back_one_stage_and_split(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    assert work.recorded("propose", "trainval") is None and work.recorded_splits("propose") == []
    work.record("propose", "trainval", {"method": "ss-fast"})
    work.record("cache-features", "trainval", {"spp": {"pyramid": [1, 2]}})
    work.record("propose", "test", {"method": "ss-quality"})
    work.record("propose", "trainval", {"method": "edgeboxes"})  # a rerun replaces the entry
    assert work.recorded("propose", "trainval") == {"method": "edgeboxes"}
    assert work.recorded("propose", "test") == {"method": "ss-quality"}
    assert work.recorded("cache-features", "trainval") == {"spp": {"pyramid": [1, 2]}}
    assert work.recorded("cache-features", "test") is None
    assert work.recorded("detect", "trainval") is None
    assert work.recorded_splits("propose") == ["test", "trainval"]  # settings.json's order
    assert work.recorded_splits("cache-features") == ["trainval"]
    # A stage whose name starts like another's is not mixed up with it.
    assert work.recorded_splits("cache") == []
