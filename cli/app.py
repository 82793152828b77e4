"""The typer application object and the error boundary between stages and the user.

A user-facing failure ends as one line, ``sppdet: error: <file>: <what> ; <fix>``, and exit code
2: an SppdetError, and the OSErrors the user fixes in the environment (disk full, read-only
folder, permissions) that reach here without a stage having named them.

stdout carries results only (tables, JSON); progress bars, notes, warnings and log lines go to
stderr. Logging is configured here, once, by the app's options (``--log-level``, ``-v``, ``-q``).
Nothing here imports torch, OpenCV or h5py: the commands import their stages when they run, so
``sppdet --help`` and shell completion stay fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TextIO

import typer

from sppdet.cache.atomic import environment_failure
from sppdet.cli.renamed import translate_renamed
from sppdet.detector.core.errors import SppdetError

try:  # typer >= 0.2x vendors click; its usage errors derive from TyperException
    from typer import TyperException as UsageFailure
except ImportError:  # older typer re-exports the click package's exceptions
    from click import ClickException as UsageFailure

PACKAGE = "sppdet"
LOG_LEVELS = ("debug", "info", "warning", "error")
INTERRUPTED = "sppdet: interrupted; finished work is kept, rerun the same command to resume"

app = typer.Typer(
    name="sppdet",
    help="SPP-net object detection (He et al., 2014) as a staged, resumable pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts are literal: rich markup would eat "[default: WORK/detections/S]" and "[ray]".
    rich_markup_mode=None,
)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the sys.stderr of the moment, so that log lines go through the proxy a live
    progress bar installs there and print above the bar instead of through it."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the sys.stderr of the moment


class _Formatter(logging.Formatter):
    """Info lines as they are; other levels prefixed, e.g. ``warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


_handler = _StderrHandler()
_handler.setFormatter(_Formatter("%(message)s"))


def configure_logging(level: str = "info") -> None:
    """sppdet's log records at LEVEL and above to stderr (idempotent: one handler)."""
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level.upper())
    if _handler not in logger.handlers:
        logger.addHandler(_handler)


@contextmanager
def logging_to_stderr() -> Iterator[None]:
    """Logging as one CLI run configures it (info and above to stderr, until the app's options
    say otherwise), undone afterwards: a run inside a Python process (a test, a notebook)
    leaves that process's logging as it found it."""
    logger = logging.getLogger(PACKAGE)
    level, attached = logger.level, _handler in logger.handlers
    configure_logging()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not attached:
            logger.removeHandler(_handler)


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        print(f"sppdet {package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    log_level: str = typer.Option(
        "info",
        "--log-level",
        help=f"Log lines shown on stderr: {', '.join(LOG_LEVELS)}.",
        case_sensitive=False,
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Same as --log-level debug."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Same as --log-level warning."),
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print sppdet's version and exit.",
    ),
) -> None:
    """SPP-net object detection (He et al., 2014) as a staged, resumable pipeline.

    Results go to stdout; progress, notes and warnings to stderr.
    """
    if log_level.lower() not in LOG_LEVELS:
        raise SppdetError(f"--log-level {log_level!r}: choose {', '.join(LOG_LEVELS)}")
    configure_logging("debug" if verbose else "warning" if quiet else log_level.lower())


def _error_line(exc: SppdetError) -> str:
    # One line whatever a message quotes (a library's multi-line text, a file's content).
    return "sppdet: error: " + " ".join(line.strip() for line in str(exc).splitlines())


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    with logging_to_stderr():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    value_options = {
        name for p in command.params if not getattr(p, "is_flag", True) for name in p.opts
    }
    argv = translate_renamed(sys.argv[1:] if argv is None else argv, value_options)
    try:
        result = command.main(args=argv, prog_name="sppdet", standalone_mode=False)
    except SppdetError as exc:
        print(_error_line(exc), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        failure = environment_failure(exc, exc.filename or "sppdet")
        if failure is None:
            raise
        print(_error_line(failure), file=sys.stderr)
        return failure.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except UsageFailure as exc:
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr)
        return 130
    if result == 130:  # typer turns Ctrl-C into exit code 130 itself
        print(INTERRUPTED, file=sys.stderr)
    return result if isinstance(result, int) else 0
