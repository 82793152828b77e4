"""Helpers of the fault-injection tests: running the CLI, and what a clean failure looks like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands

CLI = [sys.executable, "-c", "from sppdet.cli.main import main; main()"]
# Child processes compute with this process's thread count: conv5 maps are bit-identical only at
# equal thread counts, and stores are compared byte for byte with runs made here.
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": str(torch.get_num_threads())}
QUICK_FEATURES = ["--scales", "64", "--device", "cpu", "--dtype", "float32"]
QUICK_PROPOSALS = ["--preset", "quick-cpu", "--method", "ss-fast", "--max-boxes", "60"]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`sppdet ARGS` in a fresh process (a crash there cannot take the test runner with it)."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def start_cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def run_here(args: list[str]) -> int:
    """`sppdet ARGS` in this process (faster: no start-up); read its output with capfd."""
    load_commands()
    return run_app(args)


def error_line(code: int, err: str) -> str:
    """The one error line of a failed command, after checking that it failed cleanly: exit code
    2, no traceback or library noise, exactly one `sppdet: error:` line, and it is the last line,
    in the form `<file>: <what> ; <fix>`."""
    assert code == 2, (code, err)
    assert "Traceback" not in err and "HDF5" not in err and "errno =" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("sppdet: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    message = errors[0].removeprefix("sppdet: error: ")
    where, what_fix = message.split(": ", 1)
    assert where and " ; " in what_fix, message
    return message


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store folder (shards, index, any stray temporary) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}
