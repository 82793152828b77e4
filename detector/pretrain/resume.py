"""The resume state of a ``pretrain`` run: ``NAME.resume.pt`` beside the checkpoint ``NAME.pt``.

Every random choice of epoch e is a function of (seed, e, sample) (``pretrain.train``), so the
state written (atomically) after every epoch lets an interrupted run restart its unfinished epoch
and end with the weights an uninterrupted run would have. The state is a dict: this module's
envelope (format, version, settings and their fingerprint, epochs done) around the training
entries ``pretrain.train`` saves and restores (model, optimizer momentum, plateau counters,
colour statistics, history). The settings cover the data and every setting except
``RUN_SETTINGS``, so the same command resumes, a longer ``--epochs`` continues, and other
settings are refused with the first differences named; so is a start from other weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sppdet.cache.atomic import atomic_output
from sppdet.cache.fingerprint import differences, fingerprint
from sppdet.detector.core.config import PretrainConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.samples import SampleSet

STATE_FORMAT = "sppdet-pretrain-state"
STATE_VERSION = 1
RUN_SETTINGS = ("epochs", "workers", "device")  # settings a resumed run may change
START_SETTING = "weights"  # the checkpoint a run starts from: recorded by its content hash
DIFFERENCES_SHOWN = 3  # differing settings named when a state is refused


def state_path(out: str | Path) -> Path:
    """The resume state beside the checkpoint: ``name.pt`` -> ``name.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")


def run_settings(
    cfg: PretrainConfig, samples: SampleSet, split: str, weights_id: str | None
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the state. The checkpoint a run
    starts from enters as WEIGHTS_ID (its content hash, ``file:<sha256>``), not as its path; a
    random start adds nothing the seed does not say, so it is left out and the states of runs
    made before the setting existed still resume."""
    kept = {k: v for k, v in as_dict(cfg).items() if k not in RUN_SETTINGS and k != START_SETTING}
    if weights_id is not None:
        kept[START_SETTING] = weights_id
    return {"pretrain": kept, "split": split, "data": samples.describe()}


def save_state(
    path: Path, settings: dict[str, Any], epoch: int, training: Mapping[str, Any]
) -> None:
    """Write the state after EPOCH epochs: the envelope, then the TRAINING entries in order."""
    payload = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "fingerprint": fingerprint(settings),
        "settings": settings,
        "epoch": epoch,
        **training,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The state at PATH, refused (one line) when unreadable, foreign or made with other
    SETTINGS."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SppdetError(
            f"{path}: unreadable resume state ({reason}); delete it or rerun with --no-resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SppdetError(f"{path}: not a pretrain resume state; delete it or pass another --out")
    if state.get("version") != STATE_VERSION:
        raise SppdetError(
            f"{path}: resume state version {state.get('version')!r} unsupported ; delete it or "
            "rerun with --no-resume"
        )
    if state["fingerprint"] != fingerprint(settings):
        diff = differences(settings, state["settings"])
        raise SppdetError(
            f"{path}: resume state made with other settings "
            f"({'; '.join(diff[:DIFFERENCES_SHOWN])}); rerun with --no-resume to start over, or "
            "choose another --out"
        )
    return state
