"""Old option spellings, kept working as hidden aliases of their new names (with a warning).

Option names mean one thing across commands: ``--out`` is always a folder (a file is
``--output``, or ``--report`` for a JSON report), ``--report FILE`` writes a JSON report and
``--json`` prints one, ``--weights`` names network weights (``--ckpt`` is gone), ``--workers``
counts processes (threads are ``--loader-threads``) and ``--num-images`` counts images
(``--images`` is a folder). The old spellings are rewritten here, before the command line is
parsed, so they appear in no help text and cost the commands nothing.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# command -> {old spelling: new spelling}
RENAMED: dict[str, dict[str, str]] = {
    "bench": {"--out": "--report", "--images": "--num-images"},
    "propose-recall": {"--json": "--report"},
    "pretrain": {"--out": "--output", "--workers": "--loader-threads"},
    "classify-eval": {"--ckpt": "--weights", "--workers": "--loader-threads"},
    "convert-caffe": {"--out": "--output"},
    "synth": {"--images": "--num-images"},
    "demo": {"--images": "--num-images"},
    "evaluate": {"--json": "--report"},
}


def _command_index(argv: list[str], value_options: set[str]) -> int | None:
    """Where the command name is in ARGV: the first word that is neither an option of the app
    nor the value of one (VALUE_OPTIONS: the app's options that take a value)."""
    takes_value = False
    for i, arg in enumerate(argv):
        if takes_value:
            takes_value = False
        elif arg == "--":
            return None
        elif arg.startswith("-"):
            takes_value = arg in value_options
        else:
            return i
    return None


def translate_renamed(argv: list[str], value_options: set[str]) -> list[str]:
    """ARGV with the old option spellings of its command replaced by the new ones; VALUE_OPTIONS
    are the app's own options that take a value (they come before the command)."""
    command = _command_index(argv, value_options)
    if command is None or argv[command] not in RENAMED:
        return list(argv)
    renames = RENAMED[argv[command]]
    translated = argv[: command + 1]
    for i, arg in enumerate(argv[command + 1 :], start=command + 1):
        if arg == "--":  # the rest are arguments, not options
            return translated + argv[i:]
        old, equals, value = arg.partition("=")
        new = renames.get(old)
        if new is None:
            translated.append(arg)
            continue
        log.warning("%s %s is deprecated; use %s", argv[command], old, new)
        translated.append(new + equals + value)
    return translated
