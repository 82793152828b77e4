"""The one layering rule, read from the imports (ast), so a wrong import fails with its location.

Rooms, lowest first (README, "Architecture"): the kernel ``detector.core`` imports nothing else of
sppdet; ``cache`` imports only the kernel; ``data`` (dataset records and images) the kernel and
``cache``; ``proposals`` the kernel, ``data`` and ``cache``. Numerics (boxes, spp, heads,
post-processing) import neither ``cache`` nor ``proposals``. The CLI parses, calls one stage and
prints: it imports no numerics or file-format library, so ``--help`` stays fast.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = ("detector", "cli", "proposals", "cache")  # source folders -> sppdet.<name>

# Room of a module: the first dotted prefix found here, longest first.
ROOMS = {
    "sppdet.detector.core": "core",
    "sppdet.cache": "cache",
    "sppdet.detector.data": "data",
    "sppdet.proposals": "proposals",
    "sppdet.detector.spp": "spp",
    "sppdet.detector.backbones": "backbones",
    "sppdet.detector.features": "features",
    "sppdet.detector.heads": "heads",
    "sppdet.detector.evaluation": "evaluation",
    "sppdet.detector.training": "training",
    "sppdet.detector.detection.postprocess": "postprocess",
    "sppdet.detector.detection": "detection",
    "sppdet.detector.pretrain": "pretrain",
    "sppdet.detector.pipeline": "top",
    "sppdet.detector.bench": "top",
    "sppdet.detector.inference": "inference",
    "sppdet.detector": "package",
    "sppdet.cli": "cli",
}

# What each room may import, besides itself.
_BELOW_TRAINING = {"core", "cache", "data", "proposals", "spp", "backbones", "features", "heads"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "cache": {"core"},
    "data": {"core", "cache"},
    "proposals": {"core", "data", "cache"},
    "spp": {"core"},
    "backbones": {"core", "spp", "cache"},
    "features": {"core", "cache", "data", "proposals", "spp", "backbones"},
    "heads": {"core", "data", "spp", "backbones"},
    "postprocess": {"core"},
    "evaluation": {"core", "cache", "data"},
    # evaluation: train-svm's calibration judges held-out detections with the devkit's matching
    "training": _BELOW_TRAINING | {"postprocess", "evaluation"},
    "detection": _BELOW_TRAINING | {"postprocess", "training", "evaluation"},
    "pretrain": {"core", "cache", "data", "spp", "backbones", "heads", "features", "evaluation"},
    # The trained model as one object (Detector, the model file, ONNX export): above detection.
    "inference": _BELOW_TRAINING | {"postprocess", "training", "evaluation", "detection"},
    "top": set(ROOMS.values()) - {"cli"},
    "package": set(ROOMS.values()) - {"cli"},
    "cli": set(ROOMS.values()),
}
NUMERICS = {"spp", "heads", "postprocess"}
NUMERIC_MODULES = {"sppdet.detector.core.boxes"}  # numerics inside the kernel
NOT_FOR_NUMERICS = {"cache", "proposals"}

# Libraries the CLI must not import: numerics and file formats live below it.
# Packages whose `from P import name` may name a module (an __init__.py, not a file of code).
PACKAGES = {
    ".".join(["sppdet", *p.relative_to(REPO).parent.parts])
    for top in TOP
    for p in (REPO / top).rglob("__init__.py")
}

CLI_FORBIDDEN = ("torch", "torchvision", "numpy", "cv2", "h5py", "scipy", "sklearn", "pycocotools")


def room_of(module: str) -> str | None:
    for prefix in sorted(ROOMS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return ROOMS[prefix]
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["sppdet", *parts])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in PATH, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            if base in PACKAGES:  # `from sppdet.detector import spp`: the names are modules
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def source_files() -> list[Path]:
    return sorted(p for top in TOP for p in (REPO / top).rglob("*.py"))


def broken_rule(me: str, target: str) -> str | None:
    """Why module ME may not import TARGET, or None when it may."""
    mine = room_of(me)
    if mine == "cli" and target.split(".")[0] in CLI_FORBIDDEN:
        return "the CLI holds no numerics or file formats"
    theirs = room_of(target) if target.startswith("sppdet.") else None
    if mine is None or theirs is None or theirs == mine:
        return None
    if theirs not in ALLOWED[mine]:
        return f"{mine} may import only: {', '.join(sorted(ALLOWED[mine])) or 'nothing of sppdet'}"
    if (mine in NUMERICS or me in NUMERIC_MODULES) and theirs in NOT_FOR_NUMERICS:
        return "numerics import neither cache nor proposals"
    return None


def violations() -> list[str]:
    bad = []
    for path in source_files():
        me = module_name(path)
        assert room_of(me) is not None, f"{path}: no room for {me}; add it to ROOMS"
        for line, target in imports(path):
            why = broken_rule(me, target)
            if why:
                bad.append(f"{path.relative_to(REPO)}:{line}: {me} imports {target} ({why})")
    return bad


def test_every_import_follows_the_layering_rule() -> None:
    bad = violations()
    assert not bad, "imports against the layering rule:\n" + "\n".join(bad)


def test_every_module_has_a_room() -> None:
    assert all(room_of(module_name(p)) for p in source_files())


@pytest.mark.parametrize(
    ("me", "target"),
    [
        ("sppdet.detector.core.config", "sppdet.cache.atomic"),
        ("sppdet.cache.shards", "sppdet.detector.data.records"),
        ("sppdet.proposals.stage", "sppdet.detector.features.reader"),
        ("sppdet.detector.spp.pooler", "sppdet.cache.shards"),
        ("sppdet.detector.heads.svm", "sppdet.proposals.store"),
        ("sppdet.detector.detection.postprocess", "sppdet.cache.workdir"),
        ("sppdet.cli.detect", "torch"),
        ("sppdet.cli.features", "h5py"),
    ],
)
def test_a_wrong_import_is_named(me: str, target: str) -> None:
    assert broken_rule(me, target)


@pytest.mark.parametrize(
    ("me", "target"),
    [
        ("sppdet.cache.shards", "sppdet.detector.core.errors"),
        ("sppdet.proposals.stage", "sppdet.detector.data.images"),
        ("sppdet.detector.training.svm", "sppdet.proposals.store"),
        ("sppdet.cli.detect", "sppdet.detector.detection.stage"),
        ("sppdet.detector.spp.pooler", "numpy"),
    ],
)
def test_an_allowed_import_passes(me: str, target: str) -> None:
    assert broken_rule(me, target) is None


@pytest.mark.parametrize(
    ("importer", "imported", "ok"),
    [
        ("core", "cache", False),
        ("cache", "core", True),
        ("cache", "data", False),
        ("proposals", "data", True),
        ("proposals", "features", False),
        ("spp", "cache", False),
        ("cli", "training", True),
    ],
)
def test_the_rule_table_says_what_the_readme_says(importer: str, imported: str, ok: bool) -> None:
    assert (imported in ALLOWED[importer]) is ok
