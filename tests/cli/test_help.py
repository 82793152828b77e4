"""The CLI's own face: fast help (no heavy imports), literal help texts, --version, completion,
logging configured once, and option names that mean one thing across commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest
import typer

from sppdet.cli.app import app, configure_logging, logging_to_stderr, run_app
from sppdet.cli.main import load_commands
from sppdet.cli.options import BACKBONES_FOR_HELP, PROPOSAL_METHODS_FOR_HELP
from sppdet.cli.renamed import RENAMED, translate_renamed
from sppdet.detector.core.errors import NO_XIMGPROC
from tests.architecture.test_layering import CLI_FORBIDDEN
from tests.scenes import tiny_voc_tree

load_commands()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
CLI = "from sppdet.cli.main import main; main()"


def _python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        timeout=120,
    )


def test_loading_every_command_imports_no_numerics_or_file_formats() -> None:
    loaded = _python(
        "import json, sys\n"
        "import sppdet.cli.main as m\n"
        "m.load_commands()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:])))",
        *CLI_FORBIDDEN,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == []


def test_every_help_renders_without_importing_torch_opencv_or_h5py() -> None:
    helped = _python(
        "import json, sys\n"
        "from sppdet.cli.app import run_app\n"
        "from sppdet.cli.main import load_commands\n"
        "load_commands()\n"
        "codes = [run_app([*c, '--help']) for c in ([], *([n] for n in sys.argv[1:]))]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'cv2', 'h5py'))\n"
        "print(json.dumps([codes, heavy]), file=sys.stderr)",
        *COMMANDS,
    )
    codes, heavy = json.loads(helped.stderr.splitlines()[-1])
    assert codes == [0] * (len(COMMANDS) + 1) and heavy == []


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    assert run_app([*command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # one line: wrapping moves no brackets


def test_help_texts_render_their_brackets_literally(capsys: pytest.CaptureFixture[str]) -> None:
    detect = _help(capsys, "detect")
    assert "Results folder [default: WORK/detections/S]." in detect
    assert "needs pip install 'sppdet[ray]'" in detect
    assert "[default: (the work folder's)]" in detect  # show_default texts too


def test_the_app_lists_every_command_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    main = _help(capsys)
    for name in COMMANDS:
        assert f" {name} " in main
    assert "--version" in main and "--log-level" in main and "--install-completion" in main


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(["--version"]) == 0
    assert capsys.readouterr().out == f"sppdet {version('sppdet')}\n"


def test_shell_completion_script_and_completions() -> None:
    script = _python(
        CLI, "--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"
    )
    assert script.returncode == 0 and "_SPPDET_COMPLETE=complete_bash" in script.stdout
    completed = _python(
        CLI, _SPPDET_COMPLETE="complete_bash", COMP_WORDS="sppdet cache-", COMP_CWORD="1"
    )
    assert completed.stdout.split() == ["cache-features", "cache-info"]


def test_help_tables_match_the_registries() -> None:
    # What --help lists without importing torch or OpenCV is what the code declares.
    from sppdet.detector.backbones.registry import backbone_specs
    from sppdet.proposals.methods import METHODS

    declared = [(s.name, s.description, s.torchvision is not None) for s in backbone_specs()]
    assert list(BACKBONES_FOR_HELP) == declared
    assert PROPOSAL_METHODS_FOR_HELP == tuple(METHODS)


def test_logging_goes_to_stderr_once_at_the_chosen_level(capsys) -> None:  # type: ignore[no-untyped-def]
    with logging_to_stderr():
        for level in ("info", "info", "warning"):  # configured again: still one handler
            configure_logging(level)
        log = logging.getLogger("sppdet.some.stage")
        log.info("not shown at warning")
        log.warning("a %s", "warning")
        configure_logging("info")
        log.info("an info line")
    log.warning("after the run: not ours to print")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: a warning\nan info line\n"


@pytest.fixture
def talker() -> Iterator[None]:
    """A command that logs one line at each level, registered for one test."""

    @app.command("talk")
    def talk() -> None:
        log = logging.getLogger("sppdet.talk")
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            log.log(level, "%s line", logging.getLevelName(level).lower())

    yield
    app.registered_commands.pop()


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ([], ["info line", "warning: warning line", "error: error line"]),
        (["-q"], ["warning: warning line", "error: error line"]),
        (
            ["--verbose"],
            ["debug: debug line", "info line", "warning: warning line", "error: error line"],
        ),
        (["--log-level", "ERROR"], ["error: error line"]),
    ],
)
def test_the_apps_log_options(talker, capsys, options, shown) -> None:  # type: ignore[no-untyped-def]
    assert run_app([*options, "talk"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == shown


def test_an_unknown_log_level_is_a_usage_error(talker, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run_app(["--log-level", "loud", "talk"]) == 2
    assert capsys.readouterr().err == (
        "sppdet: error: --log-level 'loud': choose debug, info, warning, error\n"
    )


def test_opencv_without_contrib_is_one_line_naming_the_package(tmp_path) -> None:  # type: ignore[no-untyped-def]
    voc = tiny_voc_tree(tmp_path)
    failed = _python(
        "import sys, cv2\n"
        "del cv2.ximgproc  # as after `pip install opencv-python` over the contrib build\n"
        "from sppdet.cli.app import run_app\n"
        "from sppdet.cli.main import load_commands\n"
        "load_commands()\n"
        "sys.exit(run_app(sys.argv[1:]))",
        *["propose", "--data", str(voc), "--work", str(tmp_path / "work")],
    )
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.splitlines()[-1] == f"sppdet: error: {NO_XIMGPROC}"
    assert "pip install opencv-contrib-python-headless" in NO_XIMGPROC


@pytest.mark.parametrize("command", sorted(RENAMED))
def test_renamed_options_exist_under_their_new_names_only(command: str) -> None:
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    names = {name for p in params for name in p.opts + p.secondary_opts}
    for old, new in RENAMED[command].items():
        assert new in names and old not in names, (command, old, new)


def test_old_spellings_are_rewritten_with_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    global_value = {"--log-level"}
    assert translate_renamed(["bench", "--out", "b.json", "--data", "d"], global_value) == [
        "bench", "--report", "b.json", "--data", "d",
    ]  # fmt: skip
    before_the_command = ["-v", "--log-level", "info"]
    assert translate_renamed([*before_the_command, "pretrain", "--out=p.pt"], global_value) == [
        *before_the_command, "pretrain", "--output=p.pt",
    ]  # fmt: skip
    assert "pretrain --out is deprecated; use --output" in caplog.text
    unchanged = [["detect", "--out", "d"], ["synth", "--", "--images"], ["--help"]]
    for argv in unchanged:
        assert translate_renamed(argv, global_value) == argv


def test_an_old_spelling_still_runs(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "synthetic"
    assert run_app(["synth", "--out", str(out), "--images", "4", "--seed", "1"]) == 0
    assert len((out / "ImageSets" / "Main" / "trainval.txt").read_text().split()) == 2
    captured = capsys.readouterr()
    assert "warning: synth --images is deprecated; use --num-images" in captured.err
    assert captured.out.startswith(f"wrote {out}: ")
