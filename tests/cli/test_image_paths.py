"""``detect --image`` arguments: files, folders, globs and list files, expanded before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cli.image_paths import image_files
from sppdet.detector.core.errors import SppdetError


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # the expansion never reads the files


@pytest.fixture
def imgs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path (the current folder) with imgs/: b.jpg, a.PNG, c.jpeg, notes.txt, sub/d.jpg."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "imgs"
    _touch(root / "b.jpg", root / "a.PNG", root / "c.jpeg", root / "notes.txt", root / "sub/d.jpg")
    return root


def test_a_folder_gives_its_images_sorted_by_name_without_subfolders(imgs: Path) -> None:
    assert image_files([imgs]) == [imgs / "a.PNG", imgs / "b.jpg", imgs / "c.jpeg"]


def test_a_file_is_taken_whatever_its_extension(imgs: Path) -> None:
    assert image_files([imgs / "notes.txt", imgs / "b.jpg"]) == [imgs / "notes.txt", imgs / "b.jpg"]


def test_a_quoted_glob_is_expanded_sorted_to_image_files(imgs: Path) -> None:
    assert image_files(["imgs/*"]) == [Path("imgs/a.PNG"), Path("imgs/b.jpg"), Path("imgs/c.jpeg")]
    assert image_files(["imgs/**/*.jpg"]) == [Path("imgs/b.jpg"), Path("imgs/sub/d.jpg")]


def test_a_list_file_holds_one_argument_per_line_from_the_current_folder(imgs: Path) -> None:
    listed = imgs.parent / "list.txt"
    listed.write_text("# test images\n\nimgs/c.jpeg\n  imgs/sub  \nimgs/b*.jpg\n")
    found = image_files([imgs / "a.PNG"], listed)
    assert found == [
        imgs / "a.PNG",
        Path("imgs/c.jpeg"),
        Path("imgs/sub/d.jpg"),
        Path("imgs/b.jpg"),
    ]


def test_a_file_named_twice_is_detected_once(imgs: Path) -> None:
    found = image_files([imgs / "b.jpg", "imgs/*.jpg", imgs, Path("imgs/../imgs/b.jpg")])
    assert found == [imgs / "b.jpg", imgs / "a.PNG", imgs / "c.jpeg"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("imgs/none.jpg", "imgs/none.jpg: no such file or folder ; check the path"),
        ("imgs/*.gif", "imgs/*.gif: matches nothing ; check the pattern (image files end in "),
        ("imgs/*.txt", "imgs/*.txt: matches 1 path but no image file ; check the pattern"),
    ],
)
def test_a_bad_argument_is_a_one_line_error(imgs: Path, arg: str, message: str) -> None:
    with pytest.raises(SppdetError) as failed:
        image_files([imgs / "b.jpg", arg])
    assert str(failed.value).startswith(message) and "\n" not in str(failed.value)


def test_a_folder_without_images_is_an_error(imgs: Path) -> None:
    empty = imgs.parent / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no pictures")
    with pytest.raises(SppdetError, match=rf"^{empty}: no image files \(\.jpg, \.jpeg, \.png, "):
        image_files([empty])


def test_list_file_errors_name_the_file_and_line(imgs: Path) -> None:
    listed = imgs.parent / "list.txt"
    listed.write_text("imgs/b.jpg\n\nimgs/gone.png\n")
    with pytest.raises(SppdetError, match=rf"^{listed}:3: imgs/gone.png: no such file or folder"):
        image_files([], listed)
    listed.write_text("# nothing here\n\n")
    with pytest.raises(SppdetError, match=rf"^{listed}: no image paths in this file"):
        image_files([], listed)
    with pytest.raises(SppdetError, match=rf"^{imgs.parent / 'absent.txt'}: no such file ;"):
        image_files([], imgs.parent / "absent.txt")
