"""Every stored image kind goes through read_image: grey, alpha, CMYK and EXIF-rotated files.

Proposals live in the frame of the upright image (EXIF orientation applied), which is also the
frame of the annotations.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest_proposals import draw_scene, write_annotation
from PIL import Image, ImageOps

from sppdet.cache.workdir import WorkDir
from sppdet.detector.boxes import iou_matrix
from sppdet.detector.config import ProposalConfig
from sppdet.detector.data import load_dataset, read_image
from sppdet.proposals.methods import propose
from sppdet.proposals.stage import run_proposals
from sppdet.proposals.store import open_proposals

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
