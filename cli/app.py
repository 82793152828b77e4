"""The typer application object and the error boundary between stages and the user."""

from __future__ import annotations

import sys

import typer

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


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="sppdet", standalone_mode=False)
    except SppdetError as exc:
        print(f"sppdet: error: {exc}", file=sys.stderr)
        return exc.exit_code
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
