"""The image files that ``detect --image`` and ``--images-from`` name, expanded before any work
starts, so that a typo fails at once, in one line, and not after the models have loaded.

An argument is a file (taken whatever its extension), a folder (the image files directly inside
it, sorted by name), or a glob pattern, quoted so that sppdet expands it (``'imgs/*.jpg'``,
``'imgs/**/*.png'``; matches sorted, image files only). A list file holds one such argument per
line; blank lines and lines starting with ``#`` are skipped, and relative paths are taken from
the current folder, as on the command line. A file named twice is detected once.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from sppdet.detector.core.errors import SppdetError


def _image_suffixes() -> tuple[str, ...]:
    # The suffixes the dataset readers look for, in lower case; imported here because the
    # records module brings NumPy, which --help does not need.
    from sppdet.detector.data.records import IMAGE_SUFFIXES

    return tuple(dict.fromkeys(s.lower() for s in IMAGE_SUFFIXES))


def _is_image(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.suffix.lower() in suffixes and path.is_file()


def _expand(arg: str, where: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files ARG names; WHERE says where ARG was written, for the message."""
    path = Path(arg)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if _is_image(p, suffixes))
        if not found:
            raise SppdetError(
                f"{where}{path}: no image files ({', '.join(suffixes)}) in this folder ; "
                "name the files, or a folder that holds them"
            )
        return found
    if glob.has_magic(arg):
        found = sorted(Path(p) for p in glob.glob(arg, recursive=True))
        images = [p for p in found if _is_image(p, suffixes)]
        if not images:
            paths = f"{len(found)} path{'s' if len(found) > 1 else ''}"
            what = f"matches {paths} but no image file" if found else "matches nothing"
            raise SppdetError(
                f"{where}{arg}: {what} ; check the pattern (image files end in "
                f"{', '.join(suffixes)})"
            )
        return images
    raise SppdetError(f"{where}{arg}: no such file or folder ; check the path")


def _listed(images_from: Path) -> list[tuple[str, str]]:
    """(argument, where it was written) for every line of the list file IMAGES_FROM."""
    try:
        lines = images_from.read_text().splitlines()
    except FileNotFoundError:
        raise SppdetError(
            f"{images_from}: no such file ; --images-from takes a text file with one image path "
            "per line"
        ) from None
    except UnicodeDecodeError:
        raise SppdetError(
            f"{images_from}: not a text file ; --images-from takes a text file with one image "
            "path per line"
        ) from None
    return [
        (line.strip(), f"{images_from}:{number}: ")
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def image_files(args: Iterable[str | Path], images_from: Path | None = None) -> list[Path]:
    """Every image file ARGS and the list file IMAGES_FROM name, in order, each once; a missing
    path, a folder without images, a pattern without matches or an empty list is a one-line
    SppdetError."""
    suffixes = _image_suffixes()
    named = [(str(arg), "") for arg in args]
    if images_from is not None:
        listed = _listed(images_from)
        if not listed:
            raise SppdetError(f"{images_from}: no image paths in this file ; one path per line")
        named += listed
    files: dict[Path, Path] = {}  # resolved -> as named
    for arg, where in named:
        for path in _expand(arg, where, suffixes):
            files.setdefault(path.resolve(), path)
    return list(files.values())
