"""build_cache: order and labels, skipped files, channel choice, parallel path equals serial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls.data.cache as cache_module
from imgcls.data.cache import build_cache
from imgcls.data.decode import decode_image
from imgcls.data.sources import Sample
from imgcls.errors import DataError

SIZE = 8


def _colour(path: Path, value: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Path:
    Image.new("RGB", size, value).save(path)
    return path


def _grey(path: Path, value: int, size: tuple[int, int] = (10, 12)) -> Path:
    Image.new("L", size, value).save(path)
    return path


def _broken(path: Path) -> Path:
    path.write_bytes(b"definitely not a picture")
    return path


def _noise(path: Path, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (9 + seed % 7, 13 + seed % 5) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def test_order_and_labels_kept(tmp_path):
    labels = [2, 0, 1, 1, 0, 2]
    paths = [_colour(tmp_path / f"z{i}.png", (i * 40, 255 - i * 40, 7)) for i in range(len(labels))]
    paths.reverse()  # not in name order, so a sort inside would show
    samples = [Sample(p, label) for p, label in zip(paths, labels, strict=True)]
    cache = build_cache(samples, size=SIZE, workers=1)
    assert cache.images.shape == (6, SIZE, SIZE, 3)
    assert cache.images.dtype == np.uint8
    assert cache.labels.dtype == np.int64
    assert cache.labels.tolist() == labels
    assert cache.paths == [str(p) for p in paths]
    assert cache.skipped == []
    assert len(cache) == 6 and cache.channels == 3
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(cache.images[row], decode_image(path, size=SIZE))


def test_broken_file_is_skipped_and_recorded(tmp_path):
    good = [_colour(tmp_path / f"ok{i}.png", (i * 50, 0, 0)) for i in range(4)]
    bad = _broken(tmp_path / "bad.png")
    samples = [Sample(good[0], 0), Sample(good[1], 1), Sample(bad, 1), Sample(good[2], 0), Sample(good[3], 1)]
    cache = build_cache(samples, size=SIZE, workers=1)
    assert len(cache) == 4
    assert cache.paths == [str(p) for p in good]
    assert cache.labels.tolist() == [0, 1, 0, 1]
    assert len(cache.skipped) == 1
    assert cache.skipped[0]["path"] == str(bad)
    assert "not an image" in cache.skipped[0]["reason"]
    assert str(bad) not in cache.skipped[0]["reason"]  # the path is its own field
    assert cache.skipped[0]["reason"].strip()
    for row, path in enumerate(good):
        np.testing.assert_array_equal(cache.images[row], decode_image(path, size=SIZE))


def test_all_grey_gives_one_channel(tmp_path):
    samples = [Sample(_grey(tmp_path / f"g{i}.png", 30 * i), i % 2) for i in range(4)]
    cache = build_cache(samples, size=SIZE, workers=1)
    assert cache.images.shape == (4, SIZE, SIZE, 1)
    assert cache.channels == 1
    assert [int(cache.images[i, 0, 0, 0]) for i in range(4)] == [0, 30, 60, 90]


def test_mixed_grey_and_colour_gives_three_channels(tmp_path):
    grey = _noise(tmp_path / "g.png", seed=3, mode="L")
    colour = _colour(tmp_path / "c.png", (200, 100, 50))
    flat_grey = _grey(tmp_path / "flat.png", 77)
    cache = build_cache([Sample(grey, 0), Sample(colour, 1), Sample(flat_grey, 0)], size=SIZE, workers=1)
    assert cache.images.shape == (3, SIZE, SIZE, 3)
    assert cache.channels == 3
    row = cache.images[0]
    assert (row[..., 0] == row[..., 1]).all() and (row[..., 1] == row[..., 2]).all()  # grey repeated
    np.testing.assert_array_equal(row[..., 0], decode_image(grey, size=SIZE)[..., 0])
    np.testing.assert_array_equal(row, decode_image(grey, size=SIZE, channels=3))  # as L -> RGB would
    assert (cache.images[1].reshape(-1, 3) == (200, 100, 50)).all()
    assert (cache.images[2] == 77).all()


def test_explicit_three_channels_on_grey(tmp_path):
    samples = [Sample(_grey(tmp_path / f"g{i}.png", 50 + i), 0) for i in range(3)]
    cache = build_cache(samples, size=SIZE, channels=3, workers=1)
    assert cache.images.shape == (3, SIZE, SIZE, 3)
    for i in range(3):
        assert (cache.images[i] == 50 + i).all()


def test_explicit_one_channel_on_colour(tmp_path):
    samples = [Sample(_colour(tmp_path / "red.png", (255, 0, 0)), 0), Sample(_grey(tmp_path / "g.png", 9), 1)]
    cache = build_cache(samples, size=SIZE, channels=1, workers=1)
    assert cache.images.shape == (2, SIZE, SIZE, 1)
    assert (cache.images[0] == 76).all()  # luma of pure red
    assert (cache.images[1] == 9).all()


def test_resize_policy_is_passed_on(tmp_path):
    path = _noise(tmp_path / "n.png", seed=5)
    for policy in ("crop", "squash", "pad"):
        cache = build_cache([Sample(path, 0)], size=SIZE, resize=policy, workers=1)
        np.testing.assert_array_equal(cache.images[0], decode_image(path, size=SIZE, resize=policy))


def test_max_pixels_is_passed_on(tmp_path):
    small = _colour(tmp_path / "small.png", (1, 2, 3), size=(5, 5))
    big = _colour(tmp_path / "big.png", (1, 2, 3), size=(30, 30))
    cache = build_cache([Sample(small, 0), Sample(big, 1)], size=SIZE, max_pixels=100, workers=1)
    assert cache.paths == [str(small)]
    assert cache.skipped[0]["path"] == str(big)


def test_parallel_path_equals_serial(tmp_path, monkeypatch):
    paths = []
    for i in range(23):
        if i == 11:
            paths.append(_broken(tmp_path / f"{i:02d}_bad.jpg"))
        elif i % 3 == 0:
            paths.append(_noise(tmp_path / f"{i:02d}.png", seed=i, mode="L"))
        else:
            paths.append(_noise(tmp_path / f"{i:02d}.png", seed=i))
    samples = [Sample(p, i % 4) for i, p in enumerate(paths)]

    serial = build_cache(samples, size=SIZE, workers=1)

    pools = []
    real_pool = cache_module.process_pool

    def counting_pool(workers):
        pools.append(workers)
        return real_pool(workers)

    monkeypatch.setattr(cache_module, "MIN_PARALLEL", 8)
    monkeypatch.setattr(cache_module, "CHUNK", 5)  # several chunks, so their order matters
    monkeypatch.setattr(cache_module, "process_pool", counting_pool)
    parallel = build_cache(samples, size=SIZE, workers=2)

    assert pools == [2]  # the parallel path really ran
    assert parallel.images.shape == serial.images.shape == (22, SIZE, SIZE, 3)
    np.testing.assert_array_equal(parallel.images, serial.images)
    np.testing.assert_array_equal(parallel.labels, serial.labels)
    assert parallel.paths == serial.paths
    assert parallel.skipped == serial.skipped
    assert [item["path"] for item in parallel.skipped] == [str(paths[11])]


def test_all_files_broken_is_an_error(tmp_path):
    samples = [Sample(_broken(tmp_path / f"b{i}.png"), 0) for i in range(3)]
    with pytest.raises(DataError, match="b0.png"):
        build_cache(samples, size=SIZE, workers=1)


def test_no_samples_is_not_a_crash():
    try:
        cache = build_cache([], size=SIZE, workers=1)
    except DataError:
        return
    assert len(cache) == 0


def test_a_few_large_files_decode_in_processes_a_few_small_ones_do_not(tmp_path, monkeypatch):
    small = [str(_colour(tmp_path / f"s{i}.png", (i, 0, 0))) for i in range(30)]
    assert not cache_module.parallel_pays(small, workers=2)  # tiny files: one process
    assert cache_module.parallel_pays(small * 40, workers=2)  # 1,200 images: enough by count
    monkeypatch.setattr(cache_module, "MIN_PARALLEL_BYTES", 30 * 1000)
    large = [str(_noise(tmp_path / f"n{i}.png", i + 100, mode="RGB")) for i in range(3)]
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (110, 100, 3), dtype=np.uint8)).save(large[0])
    assert Path(large[0]).stat().st_size > 30 * 1000
    assert cache_module.parallel_pays(large, workers=2)  # 3 files, but over the byte threshold
    assert not cache_module.parallel_pays(large, workers=1)
    assert not cache_module.parallel_pays([str(tmp_path / "shard.tar/member.png")] * 3, workers=2)  # unseen: 0 bytes


def test_a_few_photos_decode_in_processes_identically(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):  # JPEG photos large enough to pass the byte threshold set below
        pixels = rng.integers(0, 256, (90 + i, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"p{i}.jpg", quality=90)
        paths.append(tmp_path / f"p{i}.jpg")
    samples = [Sample(p, i % 3) for i, p in enumerate(paths)]
    serial = build_cache(samples, size=SIZE, workers=1)

    pools = []
    real_pool = cache_module.process_pool
    monkeypatch.setattr(cache_module, "process_pool", lambda workers: pools.append(workers) or real_pool(workers))
    monkeypatch.setattr(cache_module, "MIN_PARALLEL_BYTES", 50 * 1000)
    parallel = build_cache(samples, size=SIZE, workers=2)

    assert pools == [2]  # 9 images, under MIN_PARALLEL, yet in processes: their bytes decided
    np.testing.assert_array_equal(parallel.images, serial.images)
    assert parallel.paths == serial.paths and parallel.labels.tolist() == serial.labels.tolist()
