"""The one exception type that reaches users.

Every stage raises ``SppdetError`` for problems a user can fix (a missing file, a stale cache, a
malformed line). The CLI prints its message as one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

# What a missing OpenCV contrib module means, and the package that brings it back.
NO_XIMGPROC = (
    "cv2.ximgproc: this OpenCV lacks the contrib modules (plain opencv-python was installed over "
    "them?) ; pip uninstall opencv-python opencv-python-headless && pip install "
    "opencv-contrib-python-headless"
)


class SppdetError(Exception):
    """A user-facing failure: the message names the file or setting and the fix."""

    exit_code = 2
