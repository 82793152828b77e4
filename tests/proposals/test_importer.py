"""Importing R-CNN .mat proposal files (MATLAB v5 through SciPy, v7.3 through HDF5)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.proposals.importer import rcnn_to_xyxy, read_rcnn_mat
from sppdet.proposals.stage import import_proposals
from sppdet.proposals.store import open_proposals
from tests.scenes import tiny_voc_tree


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    return tiny_voc_tree(tmp_path)


IDS = [f"img{i:02d}" for i in range(5)]


# R-CNN rows: [y1 x1 y2 x2], 1-based. img00: a box, a 10 px tall one (dropped by min_side 20),
# a box beyond the 160 x 120 image (clipped) and an exact duplicate of the first (dropped).
RCNN_BOXES = {
    "img00": [[11, 21, 60, 80], [1, 1, 10, 100], [50, 100, 130, 170], [11, 21, 60, 80]],
    "img01": [[1, 1, 120, 160]],
    "img02": [],
    "img03": [[5, 5, 44, 44], [30, 40, 89, 119]],
    "img04": [[2, 3, 50, 60]],
}


EXPECTED_IMG00 = [[20, 10, 79, 59], [99, 49, 159, 119]]  # x1 y1 x2 y2, 0-based, clipped


def _save_v5(path: Path, ids: list[str], boxes: dict[str, list[list[int]]]) -> None:
    images = np.empty((1, len(ids)), object)
    cells = np.empty((1, len(ids)), object)
    for i, image_id in enumerate(ids):
        images[0, i] = image_id
        cells[0, i] = np.array(boxes[image_id], np.float64).reshape(-1, 4)
    scipy.io.savemat(path, {"images": images, "boxes": cells})


def _matlab(dataset: h5py.Dataset, kind: str) -> h5py.Dataset:
    dataset.attrs["MATLAB_class"] = np.bytes_(kind)
    return dataset


def _save_v73(path: Path, ids: list[str], boxes: dict[str, list[list[int]]]) -> None:
    """The layout MATLAB's save -v7.3 writes: transposed arrays, cells of references."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        id_refs, box_refs = [], []
        for i, image_id in enumerate(ids):
            text = np.array([[ord(c) for c in image_id]], np.uint16).T  # 1 x L char, transposed
            id_refs.append(_matlab(refs.create_dataset(f"i{i}", data=text), "char").ref)
            rows = np.array(boxes[image_id], np.float64).reshape(-1, 4)
            if len(rows):
                node = _matlab(refs.create_dataset(f"b{i}", data=rows.T), "double")
            else:  # MATLAB stores an empty array as its dimensions, flagged MATLAB_empty
                node = _matlab(
                    refs.create_dataset(f"b{i}", data=np.array([0, 4], np.uint64)), "double"
                )
                node.attrs["MATLAB_empty"] = np.uint8(1)
            box_refs.append(node.ref)
        for name, refs_list in (("images", id_refs), ("boxes", box_refs)):
            data = np.array(refs_list, dtype=h5py.ref_dtype).reshape(-1, 1)  # a 1 x N cell
            _matlab(handle.create_dataset(name, data=data), "cell")
    with open(path, "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


@pytest.mark.parametrize("save", [_save_v5, _save_v73], ids=["v5", "v7.3"])
def test_read_rcnn_mat_converts_boxes(tmp_path: Path, save) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ss.mat"
    save(path, IDS, RCNN_BOXES)
    boxes = read_rcnn_mat(path)
    assert list(boxes) == IDS
    np.testing.assert_array_equal(boxes["img00"][0], [20, 10, 79, 59])
    np.testing.assert_array_equal(boxes["img03"], [[4, 4, 43, 43], [39, 29, 118, 88]])
    assert boxes["img02"].shape == (0, 4)


@pytest.mark.parametrize("save", [_save_v5, _save_v73], ids=["v5", "v7.3"])
def test_import_stores_the_files_order_filtered(tiny_voc: Path, tmp_path: Path, save) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ss.mat"
    save(path, [*IDS, "not-in-split"], {**RCNN_BOXES, "not-in-split": [[1, 1, 50, 50]]})
    dataset = load_dataset(tiny_voc, "trainval")
    work = WorkDir.at(tmp_path / "w")
    summary = import_proposals(dataset, work, path, min_side=20, shard_size=2)
    assert (
        summary.method == "import" and summary.computed == 5 and summary.seconds_per_image is None
    )
    with open_proposals(work, "trainval") as store:
        assert store.params["method"] == "import" and store.params["source"] == "ss.mat"
        np.testing.assert_array_equal(store.boxes("img00"), EXPECTED_IMG00)
        np.testing.assert_array_equal(store.boxes("img03"), [[4, 4, 43, 43], [39, 29, 118, 88]])
        assert store.boxes("img02").shape == (0, 4)
    cut = import_proposals(dataset, work, path, min_side=20, max_boxes=1, force=True)
    assert cut.mean_boxes == pytest.approx(4 / 5)  # four images keep one box, img02 none
    again = import_proposals(dataset, work, path, min_side=20, max_boxes=1)
    assert again.computed == 0  # same file and settings: nothing to redo


def test_import_refuses_files_that_miss_images_or_are_malformed(
    tiny_voc: Path, tmp_path: Path
) -> None:
    dataset = load_dataset(tiny_voc, "trainval")
    work = WorkDir.at(tmp_path / "w")
    partial = tmp_path / "partial.mat"
    _save_v5(partial, IDS[:3], RCNN_BOXES)
    with pytest.raises(SppdetError, match=r"2 of 5 images of split 'trainval' are not in the file"):
        import_proposals(dataset, work, partial, min_side=20)
    text = tmp_path / "boxes.mat"
    text.write_text("not a MATLAB file")
    with pytest.raises(SppdetError, match="not a readable MATLAB .mat file"):
        read_rcnn_mat(text)
    wrong = tmp_path / "wrong.mat"
    three = np.empty((1, 1), object)
    three[0, 0] = np.zeros((2, 3))
    scipy.io.savemat(wrong, {"images": np.array(["a"], object), "boxes": three})
    with pytest.raises(SppdetError, match="boxes of image 'a' are not an \\[M x 4\\] numeric"):
        read_rcnn_mat(wrong)
    scipy.io.savemat(wrong, {"images": np.array(["a"], object), "boxes": np.zeros((1, 4))})
    with pytest.raises(SppdetError, match="'boxes' is a float64 array, not a cell array"):
        read_rcnn_mat(wrong)
    missing = tmp_path / "missing.mat"
    scipy.io.savemat(missing, {"images": np.array(["a"], object)})
    with pytest.raises(SppdetError, match="no variable 'boxes'"):
        read_rcnn_mat(missing)
    with pytest.raises(SppdetError, match="proposal file not found"):
        read_rcnn_mat(tmp_path / "none.mat")


def test_rcnn_boxes_are_converted_to_zero_based_xyxy() -> None:
    np.testing.assert_array_equal(rcnn_to_xyxy(np.array([[1, 2, 30, 40]])), [[1, 0, 39, 29]])
