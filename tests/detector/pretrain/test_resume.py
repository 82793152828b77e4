"""Tests of ``sppdet.detector.pretrain.resume``: where the state lies, what it holds, and the
states it refuses (one line each)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.resume import (
    STATE_FORMAT,
    STATE_VERSION,
    load_state,
    run_settings,
    save_state,
    state_path,
)
from sppdet.detector.pretrain.samples import folder_samples
from tests.detector.pretrain.shared import CFG

SETTINGS = {"pretrain": {"base_lr": 0.01, "seed": 3}, "split": "train", "data": {"hash": "ab"}}


def test_state_lies_beside_the_checkpoint(tmp_path):
    assert state_path(tmp_path / "model.pt") == tmp_path / "model.resume.pt"
    assert state_path("runs/model") == state_path("runs/model.pt")


def test_settings_leave_out_what_a_resumed_run_may_change(tree):
    samples = folder_samples(tree, "train")
    settings = run_settings(CFG, samples, "train", None)
    assert settings["split"] == "train" and settings["data"] == samples.describe()
    assert {"epochs", "workers", "device"}.isdisjoint(settings["pretrain"])
    assert settings["pretrain"]["base_lr"] == CFG.base_lr
    longer = dataclasses.replace(CFG, epochs=9, workers=3, device="cuda")
    assert run_settings(longer, samples, "train", None) == settings
    other = run_settings(dataclasses.replace(CFG, seed=4), samples, "train", None)
    assert fingerprint(other) != fingerprint(settings)


def test_start_weights_enter_by_content_not_path(tree):
    samples = folder_samples(tree, "train")
    random = run_settings(CFG, samples, "train", None)
    # A random start records nothing new: states written before --weights existed resume.
    assert "weights" not in random["pretrain"]
    here = run_settings(dataclasses.replace(CFG, weights="a/net.pt"), samples, "train", "file:12")
    moved = run_settings(dataclasses.replace(CFG, weights="b/net.pt"), samples, "train", "file:12")
    assert here == moved and here["pretrain"]["weights"] == "file:12"
    assert {k: v for k, v in here["pretrain"].items() if k != "weights"} == random["pretrain"]
    other = run_settings(dataclasses.replace(CFG, weights="a/net.pt"), samples, "train", "file:34")
    assert fingerprint(other) != fingerprint(here) != fingerprint(random)


def test_saved_state_reads_back_in_order(tmp_path):
    path = tmp_path / "m.resume.pt"
    save_state(path, SETTINGS, 2, {"model": {"w": torch.arange(3.0)}, "history": [{"epoch": 1}]})
    state = load_state(path, SETTINGS)
    assert list(state) == [
        "format",
        "version",
        "fingerprint",
        "settings",
        "epoch",
        "model",
        "history",
    ]
    assert (state["format"], state["version"], state["epoch"]) == (STATE_FORMAT, STATE_VERSION, 2)
    assert state["fingerprint"] == fingerprint(SETTINGS) and state["settings"] == SETTINGS
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
    assert state["history"] == [{"epoch": 1}]


def test_other_settings_are_refused_naming_the_difference(tmp_path):
    path = tmp_path / "m.resume.pt"
    save_state(path, SETTINGS, 1, {})
    other = {**SETTINGS, "pretrain": {"base_lr": 0.02, "seed": 3}}
    with pytest.raises(SppdetError, match=r"other settings \(pretrain\.base_lr: 0\.01 .*0\.02"):
        load_state(path, other)


def test_foreign_and_broken_states_are_refused(tmp_path):
    path = tmp_path / "m.resume.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(SppdetError, match="unreadable resume state .*--no-resume"):
        load_state(path, SETTINGS)
    torch.save({"format": "something else"}, path)
    with pytest.raises(SppdetError, match="not a pretrain resume state"):
        load_state(path, SETTINGS)
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION + 1}, path)
    with pytest.raises(SppdetError, match=f"version {STATE_VERSION + 1} unsupported"):
        load_state(path, SETTINGS)
