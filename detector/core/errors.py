"""The one exception type that reaches users.

Every stage raises ``SppdetError`` for problems a user can fix (a missing file, a stale cache, a
malformed line). The CLI prints its message as one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class SppdetError(Exception):
    """A user-facing failure: the message names the file or setting and the fix."""

    exit_code = 2
