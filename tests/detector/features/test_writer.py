"""Tests of ``sppdet.detector.features.writer``.

cache-features: resizing and the size cap, stored maps, fingerprint, resume and crash safety.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import sppdet.detector.features.conv5 as conv5
import sppdet.detector.features.writer as writer_module
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING
from sppdet.detector.core.config import FeatureConfig, SppConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.voc import load_voc
from sppdet.detector.features.conv5 import conv5_name
from sppdet.detector.features.writer import cache_features, feature_params
from tests.detector.features.shared import CONFIG


def test_fingerprint_covers_every_setting(tmp_path):
    base = feature_params(CONFIG)
    assert (
        base["weights"] == "random:seed0" and base["preprocessing"] == ZF5_PREPROCESSING.to_dict()
    )
    assert base["geometry"] == {"stride": 16, "offset": 20.0, "receptive_field": 139}
    reference = FeatureConfig(scales=(100, 160), max_size=300, flip=True)
    pre = Preprocessing((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), "RGB", 1.0)
    variants = {
        "backbone": "alexnet",
        "weights": str(save_backbone_checkpoint(tmp_path / "w.pt", "zf5", build_trunk("zf5"), pre)),
        "scales": (100,),
        "max_size": 999,
        "dtype": "float32",
        "flip": False,
        "precision": "bf16",
    }
    before = feature_params(reference)
    for key, value in variants.items():
        after = feature_params(dataclasses.replace(reference, **{key: value}))
        assert after != before, key
        if key == "weights":  # a file's identity is its hash; its preprocessing is recorded
            assert after["weights"].startswith("file:") and after["preprocessing"] == pre.to_dict()
    # device and shard size do not change the maps
    same = dataclasses.replace(reference, device="cuda", shard_size=9)
    assert feature_params(same) == before


def test_mixed_precision_maps_are_close_to_float32(voc):
    record = load_voc(voc, "trainval").records[0]
    resized = conv5.load_resized(record, (96,), None).resized
    trunk, pre, cpu = build_trunk("zf5").eval(), ZF5_PREPROCESSING, torch.device("cpu")
    exact = conv5.compute_conv5(trunk, pre, resized, cpu, False, torch.float32)[0][1]
    mixed = conv5.compute_conv5(trunk, pre, resized, cpu, False, torch.float32, "bf16")[0][1]
    assert not torch.equal(mixed, exact)  # bf16 really ran
    # bf16 keeps 8 bits of mantissa: relative errors of a few 1e-3 per layer, five layers deep.
    assert (mixed - exact).norm() / exact.norm() < 0.05
    with pytest.raises(SppdetError, match="--precision"):
        feature_params(FeatureConfig(precision="int8"))


def test_other_settings_are_refused_unless_forced(voc, tmp_path):
    dataset = load_voc(voc, "trainval")
    config = FeatureConfig(scales=(100,), max_size=300, shard_size=3, device="cpu")
    cache_features(dataset, tmp_path, config, progress=False)
    other = FeatureConfig(scales=(120,), max_size=300, shard_size=3, device="cpu")
    with pytest.raises(SppdetError, match=r"scales.*--force"):
        cache_features(dataset, tmp_path, other, progress=False)
    stats = cache_features(dataset, tmp_path, other, force=True, progress=False)
    assert stats.computed == 5 and stats.scales == (120,)


def test_crash_leaves_no_valid_partial_shard_and_rerun_resumes(voc, tmp_path, built):
    dataset = load_voc(voc, "trainval")
    real = writer_module.compute_conv5
    calls = []

    def dies_on_the_fourth_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of shard 1 (images 2, 3)
        return real(*args, **kwargs)

    writer_module.compute_conv5 = dies_on_the_fourth_image
    try:
        with pytest.raises(KeyboardInterrupt):
            cache_features(dataset, tmp_path, CONFIG, progress=False)
    finally:
        writer_module.compute_conv5 = real
    root = WorkDir.at(tmp_path).features("trainval")
    assert sorted(p.name for p in root.glob("shard-*")) == ["shard-00000.h5"]
    with pytest.raises(SppdetError, match="incomplete"):
        ShardedStore.open(root, "features", "sppdet cache-features")
    (root / "shard-00002.h5.tmp-4242").write_bytes(b"half a shard from a killed process")
    counted = []

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)

    writer_module.compute_conv5 = counting
    try:
        stats = cache_features(dataset, tmp_path, CONFIG, progress=False)
    finally:
        writer_module.compute_conv5 = real
    assert (stats.computed, len(counted)) == (3, 3)  # shards 1 and 2 only
    assert not list(root.glob("*.tmp-*"))
    resumed = ShardedStore.open(root, "features", "sppdet cache-features")
    clean = ShardedStore.open(built[0].features("trainval"), "features", "sppdet cache-features")
    for image_id in resumed:
        for k in range(2):
            for flip in (False, True):
                name = conv5_name(k, flip)
                assert np.array_equal(resumed.get(image_id, name), clean.get(image_id, name))
    resumed.close()
    clean.close()


def test_writer_failure_propagates_and_drops_the_shard(voc, tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "put", disk_full)
    with pytest.raises(OSError, match="No space"):
        cache_features(load_voc(voc, "trainval"), tmp_path, CONFIG, progress=False)
    root = WorkDir.at(tmp_path).features("trainval")
    assert not list(root.glob("shard-*"))


def test_float32_storage_and_timing_breakdown(voc, tmp_path):
    config = FeatureConfig(scales=(100,), dtype="float32", flip=False, shard_size=5, device="cpu")
    stats = cache_features(load_voc(voc, "trainval"), tmp_path, config, progress=False)
    store = ShardedStore.open(stats.root, "features", "sppdet cache-features")
    assert store.get("im01", "conv5_s0").dtype == np.float32
    assert not store.has("im01", "conv5_s0_flip")
    store.close()
    assert stats.forward > 0 and stats.write > 0 and stats.decode > 0
    assert (
        stats.wall >= stats.forward
        and stats.bytes_total == stats.root.joinpath("shard-00000.h5").stat().st_size
    )
    settings = WorkDir.at(tmp_path).settings()["cache-features:trainval"]["settings"]
    assert settings["spp"]["pyramid"] == list(SppConfig().pyramid)


def test_cli_cache_features_and_cache_info(voc, tmp_path, capsys):
    load_commands()
    work = str(tmp_path / "w")
    args = ["cache-features", "--data", str(voc), "--scales", "100", "--work", work]
    assert run_app([*args, "--device", "cpu", "--pyramid", "6"]) == 0
    assert run_app(["cache-info", "--work", work]) == 0
    out = capsys.readouterr().out
    assert "5 of 5 cached (shards 2/2)" in out and "fingerprint" in out and "100" in out
    assert run_app(["cache-info", "--work", work, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    root = WorkDir.at(work).features("trainval")
    total = sum(p.stat().st_size for p in root.glob("shard-*.h5"))
    assert shown["path"] == str(root) and shown["shards"] == "2/2"  # 5 images, 4 a shard
    assert (shown["images"], shown["images_cached"], shown["scales"]) == (5, 5, [100])
    assert (shown["bytes_total"], shown["bytes_per_image"]) == (total, total / 5)
    assert shown["fingerprint"] == json.loads((root / "store.json").read_text())["fingerprint"]
    assert run_app([*args, "--dtype", "float8"]) == 2
    assert "--dtype 'float8'" in capsys.readouterr().err
    assert run_app(["cache-info", "--work", str(tmp_path / "nothing")]) == 2
    assert "run `sppdet cache-features` first" in capsys.readouterr().err
    if not torch.cuda.is_available():
        elsewhere = ["cache-features", "--data", str(voc), "--work", str(tmp_path / "gpu")]
        assert run_app([*elsewhere, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
