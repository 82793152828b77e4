"""Pictures of detections (data.draw): what is drawn, what the captions say, where they go, and
the format a picture is written in."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.draw import (
    Picture,
    class_colour,
    draw_detections,
    picture_path,
    place_caption,
)

CLASSES = ("raccoon", "dog")


def _grey(height: int = 240, width: int = 320) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


def test_only_detections_at_the_threshold_or_above_are_drawn_with_a_percentage() -> None:
    rgb = _grey()
    boxes = np.array([[40, 60, 140, 200], [180, 60, 300, 200], [10, 10, 30, 30]], np.float32)
    picture = draw_detections(rgb, boxes, np.array([0, 1, 0]), np.array([0.87, 0.3, 0.5]), CLASSES)
    assert [c.text for c in picture.captions] == ["raccoon 87%", "raccoon 50%"]  # best first
    # The 0.3 box is not drawn: its edges keep the image's grey. The 0.87 one is: the middle of
    # its left edge (away from any caption) has the class colour.
    np.testing.assert_array_equal(picture.rgb[130, 180], rgb[130, 180])
    np.testing.assert_array_equal(picture.rgb[130, 250:300], rgb[130, 250:300])
    assert tuple(picture.rgb[130, 40]) == class_colour(0)
    assert np.array_equal(rgb, _grey())  # the input is not drawn on


def test_percentages_round_and_the_threshold_can_be_moved() -> None:
    boxes = np.array([[50, 50, 100, 100], [150, 50, 200, 100]], np.float32)
    probabilities = np.array([0.996, 0.104])
    picture = draw_detections(_grey(), boxes, np.array([1, 0]), probabilities, CLASSES, 0.1)
    assert [c.text for c in picture.captions] == ["dog 100%", "raccoon 10%"]
    default = draw_detections(_grey(), boxes, np.array([1, 0]), probabilities, CLASSES)
    assert [c.text for c in default.captions] == ["dog 100%"]  # 0.5 by default


def _inside(rect: tuple[int, int, int, int], width: int, height: int) -> bool:
    x1, y1, x2, y2 = rect
    return 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_crowded_captions_stay_inside_the_image_and_off_each_other() -> None:
    # 24 boxes of 30 x 30 pixels packed 10 pixels apart, the top row touching the image's top
    # edge: every caption is wider than a box and taller than the gaps.
    height, width = 240, 320
    xs, ys = np.meshgrid(np.arange(6) * 40, np.arange(4) * 40)
    boxes = np.stack([xs, ys, xs + 29, ys + 29], axis=-1).reshape(-1, 4).astype(np.float32)
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(0.5, 1.0, len(boxes))
    labels = np.arange(len(boxes)) % 2
    picture = draw_detections(_grey(height, width), boxes, labels, probabilities, CLASSES)
    rects = [c.rect for c in picture.captions]
    assert len(rects) == len(boxes)
    assert all(_inside(r, width, height) for r in rects)
    assert not any(_overlap(a, b) for a, b in combinations(rects, 2))


def test_a_caption_goes_above_its_box_else_inside_else_beside_the_others() -> None:
    size, image = (60, 16), (320, 240)
    assert place_caption((50, 100, 150, 200), size, image, []) == (50, 84)  # above
    assert place_caption((50, 0, 150, 100), size, image, []) == (50, 0)  # no room above: inside
    # A box at the right edge: the caption moves left to stay inside.
    assert place_caption((300, 100, 319, 200), size, image, []) == (260, 84)
    first = draw_detections(
        _grey(),
        np.array([[50, 100, 150, 200], [60, 110, 160, 210]], np.float32),
        np.array([0, 1]),
        np.array([0.6, 0.9]),
        CLASSES,
    )
    better, worse = (c.rect for c in first.captions)
    assert better[1] + (better[3] - better[1]) == 110  # the better detection: above its box
    assert not _overlap(better, worse)


def test_a_caption_wider_than_the_image_is_shrunk_to_fit() -> None:
    picture = draw_detections(
        _grey(40, 60), np.array([[5, 5, 50, 30]], np.float32), np.array([0]), [0.9], CLASSES
    )
    assert _inside(picture.captions[0].rect, 60, 40)


@pytest.mark.parametrize(("name", "magic"), [("a.jpg", b"\xff\xd8\xff"), ("b.PNG", b"\x89PNG")])
def test_pictures_keep_their_image_format(tmp_path: Path, name: str, magic: bytes) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb[:] = cv2.GaussianBlur(rgb, (9, 9), 3)  # smooth, as photos are: JPEG keeps it closely
    path = picture_path(Path("images") / name, tmp_path)
    assert path == tmp_path / name
    Picture(rgb).save(path)
    assert path.read_bytes()[: len(magic)] == magic
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.int64)
    if name.endswith(".PNG"):
        np.testing.assert_array_equal(back, rgb)  # lossless
    else:  # JPEG quality 95: a few grey levels on average
        assert np.abs(back - rgb).mean() < 3


def test_a_suffix_without_an_image_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match=r"a\.txt: no image format for the suffix '\.txt'"):
        Picture(_grey()).save(tmp_path / "a.txt")
    assert not (tmp_path / "a.txt").exists()
