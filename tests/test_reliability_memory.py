"""A dataset too large for memory: the decode cache decides before decoding anything, spills
to a memory-mapped file that gives the same pixels (and the same trained model), or says
what to set when the disk has no room either."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls.data.cache as cache_module
import imgcls.data.spill as spill
from imgcls.cli.main import main
from imgcls.data.cache import build_cache
from imgcls.data.loader import cache_tensors
from imgcls.data.sources import Sample
from imgcls.errors import DataError
from tests.helpers import make_class_folders


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    root = make_class_folders(tmp_path / "data", per_class=5)  # with a broken and an empty file
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".webp", ".bmp", ".tif", ".gif"))
    return [Sample(p, i % 3) for i, p in enumerate(files)]


def test_available_memory_is_known_and_plausible():
    available = spill.available_memory()
    assert available is not None and 0 < available < 2**50


def test_small_cache_stays_in_memory(samples, tmp_path):
    cache = build_cache(samples, size=16, workers=1, spill_dir=tmp_path / "spill")
    assert not isinstance(cache.images, np.memmap)
    assert not (tmp_path / "spill").exists()


def test_cache_over_the_memory_limit_is_a_memmap_with_the_same_pixels(samples, tmp_path):
    in_memory = build_cache(samples, size=16, workers=1)
    spilled = build_cache(samples, size=16, workers=1, memory_limit=1000, spill_dir=tmp_path / "spill")
    assert isinstance(spilled.images, np.memmap)
    np.testing.assert_array_equal(spilled.images, in_memory.images)
    np.testing.assert_array_equal(spilled.labels, in_memory.labels)
    assert spilled.paths == in_memory.paths and spilled.skipped == in_memory.skipped
    assert len(spilled.skipped) == 2
    assert not list((tmp_path / "spill").iterdir())  # an anonymous file: nothing left behind
    images, _ = cache_tensors(spilled)
    assert np.shares_memory(images.numpy(), spilled.images)  # training reads the file, no copy


def test_all_grey_spilled_cache_is_narrowed_to_one_channel(tmp_path):
    files = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(path)
        files.append(Sample(path, i % 2))
    spilled = build_cache(files, size=8, workers=1, memory_limit=10, spill_dir=tmp_path / "spill")
    in_memory = build_cache(files, size=8, workers=1)
    assert spilled.images.shape == (4, 8, 8, 1) and isinstance(spilled.images, np.memmap)
    np.testing.assert_array_equal(spilled.images, in_memory.images)


def test_no_room_in_memory_or_on_disk_fails_before_decoding(samples, tmp_path, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(cache_module, "decode_image", no_decoding)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(DataError) as info:
        build_cache(samples, size=64, workers=1, memory_limit=1000, spill_dir=tmp_path, desc="decode train")
    message = str(info.value)
    assert "decode train" in message and "IMGCLS_CACHE_DIR" in message and "--img-size" in message
    assert str(tmp_path) in message


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "mine"))
    assert spill.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("IMGCLS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert spill.cache_dir() == tmp_path / "xdg" / "imgcls"


@pytest.mark.slow
def test_training_from_a_spilled_cache_gives_the_same_model(tmp_path, monkeypatch, caplog):
    data = make_class_folders(tmp_path / "data", per_class=8, junk=False)
    args = ["--img-size", "16", "--epochs", "1", "--model", "softmax", "--set", "train.threads=1"]
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "memory"), *args]) == 0
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "spill"))
    monkeypatch.setattr(spill, "available_memory", lambda: 1000)
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "disk"), *args]) == 0
    assert any("memory-mapped file" in r.getMessage() for r in caplog.records)

    def metrics(run: str) -> dict:
        return json.loads(Path(tmp_path / run / "metrics.json").read_text(encoding="utf-8"))

    assert metrics("disk") == metrics("memory")
