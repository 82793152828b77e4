"""The preset a work folder runs with: recorded by its first stage, the default of later stages.

``stage_config(work, name)`` gives the settings a stage runs with. With ``--preset NAME``, that
preset: the user's choice wins, and when the work folder was started with another one a warning
names the settings that differ, both values. Without ``--preset``, the settings recorded in
WORK/settings.json, rebuilt section by section (a setting this version does not know is
refused, not dropped), so that ``sppdet finetune`` on a folder made with quick-cpu trains with
quick-cpu's settings; with nothing recorded, the released preset. A folder without a recorded
preset records the one its first stage runs with (``record_config``), once the stage has found
its inputs: a command that fails on a wrong folder records nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sppdet.cache.fingerprint import compare_settings
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import PipelineConfig, as_dict, preset, section_from_dict
from sppdet.detector.core.errors import SppdetError

log = logging.getLogger(__name__)

DEFAULT_PRESET = "released"  # what a stage runs with when neither --preset nor a record says


def stage_config(work: WorkDir, name: str | None) -> PipelineConfig:
    """The settings of a stage in WORK: preset NAME when given, else WORK's recorded preset,
    else the released one."""
    recorded = work.recorded_preset()
    if name is None and recorded is not None:
        return config_from_record(work, recorded)
    cfg = preset(name or DEFAULT_PRESET)
    if recorded is not None and recorded != as_dict(cfg):
        what = compare_settings(recorded, as_dict(cfg), "work folder", f"--preset {cfg.preset}")
        log.warning(
            "%s was started with preset %s; this stage runs with --preset %s as asked (%s)",
            work.root,
            recorded.get("preset"),
            cfg.preset,
            "; ".join(what),
        )
    return cfg


def record_config(work: WorkDir, cfg: PipelineConfig) -> bool:
    """Record CFG as WORK's preset unless one is recorded; returns whether it was."""
    return work.record_preset(as_dict(cfg))


def config_from_record(work: WorkDir, recorded: dict[str, Any]) -> PipelineConfig:
    """The PipelineConfig WORK recorded (sections it lacks keep their defaults)."""
    where = f"{work.settings_path} (preset)"
    fix = "pass --preset, or start a new --work folder"
    defaults = PipelineConfig()
    sections = {f.name for f in dataclasses.fields(PipelineConfig)} - {"preset"}
    unknown = sorted(set(recorded) - sections - {"preset"})
    if unknown:
        raise SppdetError(f"{where}: unknown sections {', '.join(unknown)}; {fix}")
    rebuilt = {
        name: section_from_dict(type(getattr(defaults, name)), recorded[name], where, fix)
        for name in sections
        if name in recorded
    }
    return dataclasses.replace(
        defaults, preset=str(recorded.get("preset", DEFAULT_PRESET)), **rebuilt
    )
