"""Tests of ``sppdet.detector.evaluation.results``."""

from __future__ import annotations

import tracemalloc

import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.evaluation.results import (
    MAX_RESULTS_LINE,
    evaluate_voc_folder,
    read_voc_results,
    write_voc_results,
)
from sppdet.detector.evaluation.voc import ClassDetections
from tests.detector.evaluation.shared import dets, write_tree

# ----------------------------------------------------------------------------- results files


def test_results_files_round_trip(tmp_path):
    detections = {
        "a": dets([("x", 0.5, (0, 1, 10, 11)), ("y", 0.25, (2.5, 3, 4, 5))]),
        "b": ClassDetections.empty(),
    }
    paths = write_voc_results(tmp_path, "test", ("a", "b"), detections)
    assert [p.name for p in paths] == ["comp4_det_test_a.txt", "comp4_det_test_b.txt"]
    assert paths[0].read_text().splitlines()[0] == "x 0.5 1.0 2.0 11.0 12.0"  # 1-based
    assert paths[1].read_text() == ""
    back = read_voc_results(tmp_path, "test", ("a", "b"), {"x", "y"})
    assert back.missing == []
    assert back.detections["a"].image_ids.tolist() == ["x", "y"]
    assert back.detections["a"].scores.tolist() == [0.5, 0.25]
    assert back.detections["a"].boxes.tolist() == [[0, 1, 10, 11], [2.5, 3, 4, 5]]
    assert len(back.detections["b"]) == 0


def test_results_missing_class_file_and_foreign_class_file(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("x 0.5 1 1 5 5\n\n")
    (tmp_path / "comp4_det_test_zebra.txt").write_text("")
    (tmp_path / "comp4_det_val_b.txt").write_text("")  # another split: not looked at
    back = read_voc_results(tmp_path, "test", ("a", "b"), {"x"})
    assert back.missing == ["b"]
    assert [p.name for p in back.ignored] == ["comp4_det_test_zebra.txt"]
    assert len(back.detections["a"]) == 1


@pytest.mark.parametrize("line", ["x 0.5 1 1 5", "x 0.5 1 1 5 5 7", "x 0.5 1 1 5 5 # note"])
def test_results_line_with_wrong_field_count(tmp_path, line):
    (tmp_path / "comp4_det_test_a.txt").write_text(f"x 0.5 1 1 5 5\n\n{line}\n")
    count = len(line.split())
    with pytest.raises(SppdetError, match=rf"_test_a.txt:3: expected 6 fields.*found {count}"):
        read_voc_results(tmp_path, "test", ("a",), {"x"})


def test_results_line_with_non_numeric_score(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("x 0.5 1 1 5 5\nx high 1 1 5 5\n")
    with pytest.raises(SppdetError, match=r"comp4_det_test_a.txt:2: score 'high' is not a number"):
        read_voc_results(tmp_path, "test", ("a",), {"x"})


def test_results_line_with_non_finite_number(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("x nan 1 1 5 5\n")
    with pytest.raises(SppdetError, match=r":1: score 'nan' is not finite"):
        read_voc_results(tmp_path, "test", ("a",), {"x"})


def test_results_unknown_image_id(tmp_path):
    (tmp_path / "comp4_det_test_a.txt").write_text("x 0.5 1 1 5 5\n\nghost 0.4 1 1 5 5\n")
    with pytest.raises(SppdetError, match=r"comp4_det_test_a.txt:3: image id 'ghost' is not in"):
        read_voc_results(tmp_path, "test", ("a",), {"x"})


def test_results_folder_missing_or_without_files(tmp_path):
    with pytest.raises(SppdetError, match="detections folder not found"):
        read_voc_results(tmp_path / "nope", "test", ("a",))
    (tmp_path / "comp4_det_val_a.txt").write_text("")
    with pytest.raises(SppdetError, match="no results files"):
        read_voc_results(tmp_path, "test", ("a",))


def test_results_two_files_for_one_class(tmp_path):
    (tmp_path / "comp3_det_test_a.txt").write_text("")
    (tmp_path / "comp4_det_test_a.txt").write_text("")
    with pytest.raises(SppdetError, match="several results files for class 'a'"):
        read_voc_results(tmp_path, "test", ("a",))


def test_evaluate_voc_folder_end_to_end(tmp_path):
    root = write_tree(tmp_path / "voc")
    (tmp_path / "res").mkdir()
    # 1-based in the files: the cat box is (11, 11, 60, 50).
    (tmp_path / "res" / "comp4_det_test_cat.txt").write_text(
        "000001 0.9 11 11 60 50\n000002 0.8 11 11 60 50\n"
    )
    (tmp_path / "res" / "comp4_det_test_dog.txt").write_text(
        "000002 0.7 1 1 10 10\n000001 0.6 6 61 26 91\n000001 0.6 1 1 50 50\n"
    )
    result = evaluate_voc_folder(root, "test", tmp_path / "res")
    by_name = {r.name: r for r in result.results}
    assert by_name["cat"].ap == pytest.approx(1.0)
    assert (by_name["dog"].npos, by_name["dog"].difficult_matches) == (2, 1)
    # dog: ignored, TP, FP -> recall 0.5 at precision 1, never more.
    assert by_name["dog"].ap == pytest.approx(6 / 11)
    assert result.map == pytest.approx((1 + 6 / 11) / 2)


def test_a_huge_line_is_refused_before_any_array_is_sized_by_it(tmp_path):
    # The id column was as wide as the longest line: 1 MB made every row 4 MB. Now the line is
    # refused while the memory in use stays near the file's own size.
    rows = "".join(f"x {i / 1000!r} 1 1 5 5\n" for i in range(1000))
    huge = "x" * 1_000_000 + " 0.5 1 1 5 5\n"
    (tmp_path / "comp4_det_test_a.txt").write_text(rows + huge)
    tracemalloc.start()
    try:
        with pytest.raises(SppdetError) as caught:
            read_voc_results(tmp_path, "test", ("a",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(
        f"{tmp_path / 'comp4_det_test_a.txt'}:1001: a line of 1,000,012 characters, over the "
        f"{MAX_RESULTS_LINE:,} a results line may have ; write one detection a line"
    )
    assert peak < 20 * len(rows + huge)  # the text, its lines and their copies; no 4 GB table


def test_an_id_outside_the_split_is_refused_with_its_line(tmp_path):
    long_id = "y" * (MAX_RESULTS_LINE - 20)
    (tmp_path / "comp4_det_test_a.txt").write_text(f"x 0.5 1 1 5 5\n{long_id} 0.5 1 1 5 5\n")
    with pytest.raises(SppdetError, match=r"_test_a.txt:2: image id 'yyyy.* is not in the eval"):
        read_voc_results(tmp_path, "test", ("a",), {"x"})
