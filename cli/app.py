"""The typer application object and the error boundary between stages and the user.

A user-facing failure ends as one line, ``sppdet: error: <file>: <what> ; <fix>``, and exit code
2: an SppdetError, and the OSErrors the user fixes in the environment (disk full, read-only
folder, permissions) that reach here without a stage having named them.
"""

from __future__ import annotations

import sys

import typer

from sppdet.cache.atomic import environment_failure
from sppdet.detector.core.errors import SppdetError

try:  # typer >= 0.2x vendors click; its usage errors derive from TyperException
    from typer import TyperException as UsageFailure
except ImportError:  # older typer re-exports the click package's exceptions
    from click import ClickException as UsageFailure

app = typer.Typer(
    name="sppdet",
    help="SPP-net object detection (He et al., 2014) as a staged, resumable pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _error_line(exc: SppdetError) -> str:
    # One line whatever a message quotes (a library's multi-line text, a file's content).
    return "sppdet: error: " + " ".join(line.strip() for line in str(exc).splitlines())


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    command = typer.main.get_command(app)
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
        print(
            "sppdet: interrupted; finished work is kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    if result == 130:  # typer turns Ctrl-C into exit code 130 itself
        print(
            "sppdet: interrupted; finished work is kept, rerun the same command to resume",
            file=sys.stderr,
        )
    return result if isinstance(result, int) else 0
