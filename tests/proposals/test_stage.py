"""Every stored image kind goes through read_image: grey, alpha, CMYK and EXIF-rotated files.

Proposals live in the frame of the upright image (EXIF orientation applied), which is also the
frame of the annotations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import sppdet.proposals.shard_task as shard_task
import sppdet.proposals.stage as stage
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import ProposalConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.proposals.methods import propose
from sppdet.proposals.stage import raise_for_bad, run_proposals
from sppdet.proposals.store import open_proposals
from tests.scenes import draw_scene, file_digests, make_voc, scenes, tiny_voc_tree, write_annotation

CFG = ProposalConfig(method="ss-fast", shard_size=2)


BOX = (12, 30, 51, 99)  # in the upright 64 x 120 (W x H) frame: a tall object


EXIF_ORIENTATION = 0x0112


def _upright() -> np.ndarray:
    return draw_scene(120, 64, [BOX], seed=11)


def _save_grey(path: Path) -> np.ndarray:
    grey = cv2.cvtColor(_upright(), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(path), grey)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _save_alpha(path: Path) -> np.ndarray:
    rgb = _upright()
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return rgb  # alpha is dropped, colours untouched


def _save_cmyk(path: Path) -> np.ndarray:
    Image.fromarray(_upright()).convert("CMYK").save(path, quality=95)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        return np.asarray(image.convert("RGB"))  # Pillow's decoding as the reference (+-1)


def _save_exif_rotated(path: Path) -> np.ndarray:
    # Stored sideways (landscape 120 x 64) with Orientation 6: "rotate 90 degrees clockwise".
    stored = np.ascontiguousarray(np.rot90(_upright(), k=1))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


SAVERS = {
    "grey.png": _save_grey,
    "alpha.png": _save_alpha,
    "cmyk.jpg": _save_cmyk,
    "exif6.jpg": _save_exif_rotated,
}


@pytest.fixture(scope="module")
def odd_voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("odd") / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    expected = {}
    for name, save in SAVERS.items():
        image_id = name.split(".")[0]
        expected[image_id] = save(root / "JPEGImages" / name)
        write_annotation(root / "Annotations" / f"{image_id}.xml", name, 64, 120, [BOX])
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(expected) + "\n")
    return root, expected


@pytest.mark.parametrize("image_id", [name.split(".")[0] for name in SAVERS])
def test_read_image_gives_upright_rgb(
    odd_voc: tuple[Path, dict[str, np.ndarray]], image_id: str
) -> None:
    root, expected = odd_voc
    path = next((root / "JPEGImages").glob(f"{image_id}.*"))
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (120, 64, 3)
    tolerance = 1 if image_id == "cmyk" else 0  # two CMYK->RGB roundings may differ by one
    assert np.abs(rgb.astype(int) - expected[image_id].astype(int)).max() <= tolerance


def test_proposals_of_odd_images_are_in_the_upright_frame(
    odd_voc: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, expected = odd_voc
    dataset = load_dataset(root, "trainval")
    summary = run_proposals(dataset, WorkDir.at(tmp_path / "w"), CFG, progress=False)
    assert not summary.bad
    with open_proposals(WorkDir.at(tmp_path / "w"), "trainval") as store:
        for image_id, pixels in expected.items():
            attrs = store.attrs(image_id)
            assert (attrs["width"], attrs["height"]) == (64, 120)
            boxes = store.boxes(image_id)
            if image_id != "cmyk":  # the others decode to exactly the reference pixels
                np.testing.assert_array_equal(boxes, propose(pixels, CFG))
            assert iou_matrix(np.array([BOX]), boxes).max() >= 0.7
            assert boxes[:, 2].max() <= 63 and boxes[:, 3].max() <= 119


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    return tiny_voc_tree(tmp_path)


def _run(
    voc: Path, work: Path, cfg: ProposalConfig = CFG, **kwargs: object
) -> stage.ProposeSummary:
    dataset = load_dataset(voc, "trainval")
    return run_proposals(dataset, WorkDir.at(work), cfg, progress=False, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def clean_run(tiny_voc: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "clean"
    _run(tiny_voc, work)
    return work, file_digests(work / "proposals" / "trainval")


def test_store_holds_each_images_boxes_in_its_upright_frame(
    tiny_voc: Path, clean_run: tuple[Path, dict[str, str]]
) -> None:
    work, digests = clean_run
    assert sorted(digests) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5", "store.json"]
    dataset = load_dataset(tiny_voc, "trainval")
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert store.params["method"] == "ss-fast" and store.params["max_boxes"] == 2000
        for record in dataset.records:
            raw = store.store.get(record.image_id, "boxes")
            assert raw.dtype == np.int16
            expected = propose(read_image(record.path), CFG)
            np.testing.assert_array_equal(store.boxes(record.image_id), expected)
            attrs = store.attrs(record.image_id)
            assert (attrs["width"], attrs["height"], attrs["bad"]) == (160, 120, False)
    timing = WorkDir.at(work).report("propose-trainval.json")
    assert timing.is_file()


def test_same_bytes_with_two_workers(tiny_voc: Path, tmp_path: Path, clean_run) -> None:
    _, digests = clean_run
    summary = _run(tiny_voc, tmp_path / "two", workers=2)
    assert summary.computed == 5 and summary.workers == 2
    assert file_digests(tmp_path / "two" / "proposals" / "trainval") == digests


def test_resume_after_a_lost_shard_and_a_stale_temporary(
    tiny_voc: Path, clean_run: tuple[Path, dict[str, str]]
) -> None:
    work, digests = clean_run
    root = work / "proposals" / "trainval"
    (root / "shard-00001.h5").unlink()  # as if killed while building shard 1 ...
    stale = root / "shard-00001.h5.tmp-424242"  # ... which left its half-written temporary
    stale.write_bytes(b"half an HDF5 file")
    summary = _run(tiny_voc, work)
    assert summary.computed == 2 and summary.resumed == 3
    assert not stale.exists()
    assert file_digests(root) == digests


def test_a_crash_mid_shard_leaves_no_file_and_the_rerun_matches(
    tiny_voc: Path, tmp_path: Path, clean_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, digests = clean_run
    work = tmp_path / "crash"
    calls = {"n": 0}
    real = shard_task.propose

    def crash_on_fourth(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:  # second image of shard 1
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shard_task, "propose", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_voc, work)
    root = work / "proposals" / "trainval"
    assert sorted(p.name for p in root.iterdir()) == ["shard-00000.h5", "store.json"]
    monkeypatch.setattr(shard_task, "propose", real)
    summary = _run(tiny_voc, work)
    assert summary.computed == 3
    assert file_digests(root) == digests


def test_other_settings_are_refused_unless_forced(tiny_voc: Path, clean_run) -> None:
    work, _ = clean_run
    other = dataclasses.replace(CFG, max_boxes=50)
    with pytest.raises(SppdetError, match=r"max_boxes: 2000 \(stored\) vs 50 \(asked\).*--force"):
        _run(tiny_voc, work, other)
    summary = _run(tiny_voc, work, other, force=True)
    assert summary.computed == 5 and summary.mean_boxes <= 50
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert store.params["max_boxes"] == 50


def test_unreadable_images_are_recorded_reported_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voc = make_voc(tmp_path / "voc", scenes(4), "trainval")
    broken = voc / "JPEGImages" / "img02.png"
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:40])  # truncated file
    work = tmp_path / "work"
    summary = _run(voc, work)
    assert [b.image_id for b in summary.bad] == ["img02"]
    assert str(broken) in summary.bad[0].reason
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"skipped unreadable image: {summary.bad[0].reason}"]
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert store.boxes("img02").shape == (0, 4)
        assert store.attrs("img02")["bad"] and "img02.png" in store.attrs("img02")["error"]
        assert len(store.boxes("img03")) > 0
    with pytest.raises(SppdetError, match="1 unreadable image.*--skip-bad"):
        raise_for_bad(summary)
    broken.write_bytes(good_bytes)  # fixed: the rerun recomputes only that image's shard
    again = _run(voc, work)
    assert again.computed == 2 and not again.bad
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert len(store.boxes("img02")) > 0


def test_edge_model_only_for_edge_methods(tiny_voc: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.yml.gz"
    model.write_text("x")
    with pytest.raises(SppdetError, match="--edge-model is used by --method edgeboxes or ss\\+eb"):
        _run(tiny_voc, tmp_path / "w", CFG, edge_model=model)
    with pytest.raises(SppdetError, match="not a structured-edge model"):
        _run(
            tiny_voc, tmp_path / "w", dataclasses.replace(CFG, method="edgeboxes"), edge_model=model
        )
