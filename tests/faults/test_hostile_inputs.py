"""Hostile and damaged inputs, generated here, each through the command a user would run.

Every case ends in one line `sppdet: error: <file>: <what> ; <fix>` and exit code 2 (or, for
data that still decodes, one warning), never runs code from a file and never reads outside the
dataset's folders.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

from sppdet.cache.workdir import WorkDir
from tests.faults.shared import QUICK_PROPOSALS, error_line, run_here, store_files
from tests.scenes import write_annotation


def _propose(voc: Path, work: Path, *extra: str) -> int:
    return run_here(["propose", "--data", str(voc), "--work", str(work), *QUICK_PROPOSALS, *extra])


def _png_of_zeros(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grey PNG of WIDTH x HEIGHT black pixels (a few MB at most: zeros pack)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


class RunsCode:
    """Unpickling this would run a shell command that leaves MARKER behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_an_image_over_the_pixel_limit(voc, tmp_path, capfd) -> None:
    huge = voc / "JPEGImages" / "img01.png"
    _png_of_zeros(huge, 40000, 30000)  # 1.2 gigapixels
    write_annotation(voc / "Annotations" / "img01.xml", "img01.png", 40000, 30000, [])
    work = tmp_path / "work"
    expected = f"{huge}: 40000x30000 pixels, over the limit of 1,073,741,824 ; downscale"
    assert _propose(voc, work) == 2
    err = capfd.readouterr().err
    assert expected in error_line(2, err)  # stored as unreadable; the stage says so
    code = run_here(["cache-features", "--data", str(voc), "--work", str(work), "--scales", "64"])
    assert error_line(code, capfd.readouterr().err).startswith(expected)


def test_corrupt_jpeg_data_is_one_warning_not_raw_decoder_output(voc, tmp_path, caplog, capfd):
    rgb = cv2.imread(str(voc / "JPEGImages" / "img02.png"))
    data = bytearray(cv2.imencode(".jpg", rgb)[1].tobytes())
    data[len(data) // 2 : len(data) // 2 + 40] = bytes([0xFF, 0x00] * 20)
    (voc / "JPEGImages" / "img02.png").write_bytes(bytes(data))  # decoded by content
    with caplog.at_level(logging.WARNING, "sppdet"):
        assert _propose(voc, tmp_path / "work") == 0
    warnings = [r.getMessage() for r in caplog.records if "damaged image data" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{voc / 'JPEGImages' / 'img02.png'}: damaged image data (")
    # libjpeg's own line starts with it; sppdet's one warning quotes it after the file name.
    assert not any(
        line.startswith("Corrupt JPEG data") for line in capfd.readouterr().err.splitlines()
    )


def test_an_annotation_of_the_unturned_view(voc, tmp_path, capfd) -> None:
    pil = __import__("pytest").importorskip("PIL.Image")
    exif = pil.Exif()
    exif[0x0112] = 8  # shown turned: 120 wide, 160 high
    photo = voc / "JPEGImages" / "img03.png"
    pil.new("RGB", (160, 120)).save(photo, format="JPEG", exif=exif.tobytes())
    assert _propose(voc, tmp_path / "work") == 2
    message = error_line(2, capfd.readouterr().err)
    assert message.startswith(f"{voc / 'Annotations' / 'img03.xml'}: <size> 160x120 is the stored")


def test_a_results_file_with_a_megabyte_line(voc, tmp_path, capfd) -> None:
    results = tmp_path / "results"
    results.mkdir()
    line = "img00 0.5 1 1 20 20\n"
    (results / "comp4_det_trainval_thing.txt").write_text(line * 10 + "x" * 2**20 + line)
    code = run_here(
        ["evaluate", "--voc2007", "--data", str(voc), "--split", "trainval",
         "--detections", str(results)]
    )  # fmt: skip
    message = error_line(code, capfd.readouterr().err)
    assert message.startswith(f"{results / 'comp4_det_trainval_thing.txt'}:11: a line of 1,048,")


def test_model_files_holding_code_are_named_and_never_run(voc, tmp_path, capfd) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "weights.pt"
    torch.save({"trunk": RunsCode(marker)}, evil)
    work = tmp_path / "work"
    code = run_here(
        ["cache-features", "--data", str(voc), "--work", str(work), "--weights", str(evil)]
    )
    global_name = f"{os.system.__module__}.system"
    assert error_line(code, capfd.readouterr().err).startswith(
        f"{evil}: holds code (a pickled global {global_name}), not a model; nothing in it was run"
    )
    model = WorkDir.at(work).model("svm")
    model.parent.mkdir(parents=True)
    torch.save({"classes": ["thing"], "w": RunsCode(marker)}, model)
    code = run_here(["verify", "--work", str(work)])
    captured = capfd.readouterr()
    assert "damaged  models/svm.pt: holds code (a pickled global" in captured.out
    assert "rerun `sppdet train-svm`" in error_line(code, captured.err)
    assert not marker.exists()


def test_paths_leading_out_of_the_dataset(voc, tmp_path, capfd) -> None:
    xml = voc / "Annotations" / "img01.xml"
    xml.write_text(xml.read_text().replace("<filename>img01.png", "<filename>/etc/hostname"))
    assert _propose(voc, tmp_path / "work") == 2
    assert "<filename> '/etc/hostname' leads out of" in error_line(2, capfd.readouterr().err)
    xml.write_text(xml.read_text().replace("/etc/hostname", "img01.png"))
    (tmp_path / "outside.xml").write_text(xml.read_text())
    split = voc / "ImageSets" / "Main" / "trainval.txt"
    split.write_text(split.read_text() + "../../../outside\n")
    assert _propose(voc, tmp_path / "work") == 2
    assert error_line(2, capfd.readouterr().err) == (
        f"{split}:9: image id '../../../outside' leads out of the dataset ; list plain image ids "
        "such as 000005"
    )


def test_a_duplicate_id_names_the_split_file(voc, tmp_path, capfd) -> None:
    split = voc / "ImageSets" / "Main" / "trainval.txt"
    split.write_text(split.read_text() + "img03\n")
    assert _propose(voc, tmp_path / "work") == 2
    assert error_line(2, capfd.readouterr().err) == (
        f"{split}:9: image id 'img03' is listed twice (first on line 4) ; list each image once"
    )


def test_unparsable_store_and_settings_files(voc, tmp_path, capfd) -> None:
    work = tmp_path / "work"
    assert _propose(voc, work) == 0
    index = WorkDir.at(work).proposals("trainval") / "store.json"
    index.write_text(index.read_text()[:100])
    capfd.readouterr()
    assert _propose(voc, work) == 2
    message = error_line(2, capfd.readouterr().err)
    assert message.startswith(f"{index}: damaged, not JSON (")
    assert message.endswith(" ; rerun with --force to rebuild the store")
    assert _propose(voc, work, "--force") == 0
    settings = work / "settings.json"
    settings.write_bytes(b"\x00\x01{")
    capfd.readouterr()
    assert _propose(voc, work) == 2
    assert error_line(2, capfd.readouterr().err).startswith(f"{settings}: damaged, not ")


def test_a_truncated_shard_is_refused_then_recomputed(voc, tmp_path, capfd) -> None:
    work = tmp_path / "work"
    assert _propose(voc, work) == 0
    root = WorkDir.at(work).proposals("trainval")
    before = store_files(root)
    shard = root / "shard-00001.h5"
    shard.write_bytes(before["shard-00001.h5"][:5000])
    capfd.readouterr()
    code = run_here(["propose-recall", "--data", str(voc), "--work", str(work)])
    assert error_line(code, capfd.readouterr().err).endswith(
        "proposals store is incomplete (1 of 2 shards missing or damaged) ; rerun `sppdet "
        "propose` to finish it"
    )
    assert run_here(["verify", "--work", str(work)]) == 2
    out = capfd.readouterr().out
    assert "damaged  proposals/trainval: shard 1: 5,000 bytes where the index says" in out
    assert _propose(voc, work) == 0
    assert "(4 computed, 4 already done)" in " ".join(capfd.readouterr().out.split())
    assert store_files(root) == before
    assert json.loads((root / "store.json").read_text())["shards"]["1"]["bytes"] == len(
        before["shard-00001.h5"]
    )
    assert np.frombuffer(shard.read_bytes(), np.uint8).size == len(before["shard-00001.h5"])
