"""Entry point of the ``sppdet`` console script: imports each built command, runs the app."""

from __future__ import annotations

import importlib
import sys

from sppdet.cli.app import app, run_app

# Each module registers its commands on ``app`` when imported. A stage that is not built yet has
# no module here, so its command is absent rather than faked. The modules import their stages
# (torch, OpenCV, h5py) inside the commands: loading them all is what --help and shell completion
# cost, a fraction of a second (tests/cli/test_help.py checks the imports).
COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "propose",
    "features",
    "train",
    "detect",
    "export",
    "evaluate",
    "run",
    "pretrain",
    "bench",
    "verify",
    "convert",
)


def load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"sppdet.cli.{name}")


def main() -> None:
    load_commands()
    sys.exit(run_app())


__all__ = ["app", "main", "load_commands"]
