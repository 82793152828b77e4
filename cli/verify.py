"""``sppdet verify``: check every store and model of a work folder and say what to rerun."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from sppdet.cache.atomic import read_torch
from sppdet.cli.app import app
from sppdet.cli.options import WorkOption
from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.cache.workdir import WorkDir

DETECT_MADE_BY = "sppdet detect"


@dataclass
class Finding:
    """One checked file or store: what is wrong (None: fine), and what remakes it, in words."""

    path: Path
    problem: str | None
    rerun: str


def _stores(work: WorkDir) -> list[tuple[Path, str]]:
    """(store folder, the command that remakes it) for every store in WORK."""
    from sppdet.cache.shards import META_NAME
    from sppdet.detector.features.rcnn_writer import MADE_BY as RCNN_MADE_BY
    from sppdet.detector.features.writer import MADE_BY as FEATURES_MADE_BY
    from sppdet.proposals.store import MADE_BY as PROPOSALS_MADE_BY

    found = []
    for folder, made_by in (
        (work.proposals("x").parent, PROPOSALS_MADE_BY),
        (work.features("x").parent, FEATURES_MADE_BY),
        (work.rcnn_features("x").parent, RCNN_MADE_BY),
    ):
        for meta in sorted(folder.glob(f"*/{META_NAME}")):
            found.append((meta.parent, f"`{made_by} --split {meta.parent.name}`"))
    for meta in sorted(work.detections("x").parent.glob(f"*/candidates/{META_NAME}")):
        name = meta.parent.parent.name
        found.append((meta.parent, f"`{DETECT_MADE_BY}` (for detections/{name})"))
    return found


def _check_store(root: Path, rerun: str) -> Finding:
    from sppdet.cache.shards import ShardedStore

    try:
        check = ShardedStore.check(root)
    except SppdetError as exc:
        return Finding(root, str(exc), f"{rerun} with --force")
    if check.ok:
        return Finding(root, None, rerun)
    parts = []
    if check.unfinished:
        parts.append(f"{len(check.unfinished)} of {check.shards} shards unfinished")
    for shard, problem in check.damaged:
        parts.append(f"shard {shard}: {problem}")
    return Finding(root, "; ".join(parts), rerun)


def _check_model(path: Path) -> Finding:
    from sppdet.detector.training.inputs import MADE_BY as MODEL_MADE_BY

    made_by = MODEL_MADE_BY.get(path.stem)
    rerun = f"`{made_by}`" if made_by else f"the command that saved {path.name}"
    try:
        read_torch(path, f"rerun {rerun}")
    except SppdetError as exc:
        return Finding(path, str(exc).removeprefix(f"{path}: "), rerun)
    return Finding(path, None, rerun)


def verify_work(work: WorkDir) -> list[Finding]:
    """Check settings.json, every store (each shard against its size and sha256) and every
    model (it loads, holding data only)."""
    if not work.root.is_dir():
        raise SppdetError(f"{work.root}: no work folder here ; pass --work the experiment's folder")
    findings = []
    if work.settings_path.exists():
        try:
            work.settings()
            findings.append(Finding(work.settings_path, None, ""))
        except SppdetError as exc:
            findings.append(
                Finding(work.settings_path, str(exc), "the stages you ran after removing it")
            )
    findings += [_check_store(root, rerun) for root, rerun in _stores(work)]
    findings += [_check_model(path) for path in sorted(work.model("x").parent.glob("*.pt"))]
    return findings


@app.command("verify")
def verify_command(work: Path = WorkOption) -> None:
    """Check every store (shard sizes and sha256) and model of WORK; say what to rerun."""
    from sppdet.cache.workdir import WorkDir

    workdir = WorkDir.at(work)
    findings = verify_work(workdir)
    console = Console(highlight=False, soft_wrap=True)  # one line per finding
    for finding in findings:
        where = finding.path.relative_to(workdir.root)
        if finding.problem is None:
            console.print(f"ok       {where}", markup=False)
        else:
            console.print(f"damaged  {where}: {finding.problem}", markup=False)
    bad = [f for f in findings if f.problem is not None]
    if not findings:
        console.print(f"nothing to check in {workdir.root}", markup=False)
    if bad:
        reruns = list(dict.fromkeys(f.rerun for f in bad))
        raise SppdetError(
            f"{workdir.root}: {len(bad)} of {len(findings)} checked files or stores are damaged "
            f"or unfinished ; rerun {', '.join(reruns)} with the options they ran with (a rerun "
            "recomputes only what is missing or damaged)"
        )
