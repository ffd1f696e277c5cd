"""Streaming from shards: every training image once per epoch, split over ranks and workers,
shuffled, reproducible, and robust to bad images; truncated shards are errors."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.cache import build_cache
from imgcls.data.shards import read_index, shard_sources, write_shards
from imgcls.data.sources import Sample
from imgcls.data.stream import ShardStream, StreamShard, epoch_steps, stream_loader, stream_shards
from imgcls.errors import ConfigError, DataError
from tests.helpers import make_class_folders

SIDE = 8  # 8 x 8 BMPs: every file is 246 bytes, so shard_bytes sets the images per shard exactly
SAMPLE_BYTES = 246 + 2048  # what write_shards counts per image


def _bmp_folders(root: Path, per_class: int, classes: tuple[str, ...] = ("猫", "狗 dog")) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.bmp")
    return root


def _sources(tmp_path: Path, per_class: int, per_shard: int, val_fraction: float = 0.2, **kwargs):
    data = _bmp_folders(tmp_path / "data", per_class, **kwargs)
    write_shards(data, tmp_path / "shards", shard_bytes=per_shard * SAMPLE_BYTES)
    return shard_sources(tmp_path / "shards", None, val_fraction=val_fraction, seed=0)


def _stream(samples, **kwargs) -> ShardStream:
    options = {"batch_size": 2, "seed": 0, "size": SIDE, "channels": 3, "buffer": 4} | kwargs
    return ShardStream(stream_shards(samples), **options)


def _label(label) -> int | tuple:
    """A tensor's or array's label as an int, or a tuple of targets (multi-label)."""
    value = label.tolist()
    return tuple(value) if isinstance(value, list) else int(value)


def _pairs(batches) -> list[tuple]:
    """(label, image bytes) of every streamed image, sorted: comparable with a cache."""
    return sorted((_label(y), x.numpy().tobytes()) for b in batches for x, y in zip(b.images, b.labels, strict=True))


def _cache_pairs(samples) -> list[tuple]:
    cache = build_cache(samples, size=SIDE, channels=3, workers=1)
    return sorted((_label(y), x.tobytes()) for x, y in zip(cache.images, cache.labels, strict=True))


def _images(batches) -> list[bytes]:
    return [x.numpy().tobytes() for b in batches for x in b.images]


def _interleave(*readers) -> list:
    """The order a DataLoader delivers its workers' batches in: round robin, finished workers left out."""
    return [b for row in itertools.zip_longest(*readers) for b in row if b is not None]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("per_shard", "batch_size"), [(1, 2), (3, 1)])
def test_every_training_image_once_over_ranks_and_workers(tmp_path, workers, per_shard, batch_size):
    # 16 training images: one per shard split over 2 or 4 readers (4 or 8 each, even batches of 2),
    # or three per shard with validation samples in the same tars (batches of 1).
    sources = _sources(tmp_path, per_class=10, per_shard=per_shard)
    assert len(sources.train) == 16
    streamed = []
    for rank in range(2):
        stream = _stream(sources.train, batch_size=batch_size, rank=rank, world=2)
        batches = [b for w in range(workers) for b in stream.batches(w, workers)]
        assert len(batches) >= epoch_steps(stream, workers, 0)
        if per_shard == 1:  # each reader holds a multiple of the batch size: exactly the steps counted
            assert len(batches) == epoch_steps(stream, workers, 0) == 16 // 2 // batch_size
        assert all(b.images.shape == (batch_size, SIDE, SIDE, 3) and b.images.dtype == torch.uint8 for b in batches)
        assert all(b.labels.dtype == torch.int64 and not b.skipped for b in batches)
        streamed += batches
    assert _pairs(streamed) == _cache_pairs(sources.train)  # each once, with its label
    assert not set(_images(streamed)) & {pair[1] for pair in _cache_pairs(sources.val)}


def test_readers_are_disjoint_and_ranks_agree_on_steps(tmp_path):
    sources = _sources(tmp_path, per_class=11, per_shard=2, classes=("a", "b", "c"))  # uneven shards
    for epoch in range(3):
        streams = [_stream(sources.train, rank=rank, world=2) for rank in range(2)]
        steps = {epoch_steps(stream, 2, epoch) for stream in streams}
        assert len(steps) == 1  # every rank takes every step
        images = []
        for stream in streams:
            stream.set_epoch(epoch)
            readers = [list(stream.batches(w, 2)) for w in range(2)]
            assert sum(map(len, readers)) >= min(steps)
            images += [set(_images(batches)) for batches in readers]
        assert sum(map(len, images)) == len(set().union(*images))  # no image in two readers


def test_order_changes_with_epoch_and_seed_and_repeats_otherwise(tmp_path):
    sources = _sources(tmp_path, per_class=10, per_shard=2)  # 16 training images, batches of 2
    stream = _stream(sources.train)
    first = _images(stream)
    assert _images(stream) == first  # same seed and epoch: same batches
    stream.set_epoch(1)
    assert _images(stream) != first and sorted(_images(stream)) == sorted(first)
    assert _images(_stream(sources.train, seed=1)) != first


def test_loader_workers_give_the_simulated_batches(tmp_path):
    sources = _sources(tmp_path, per_class=10, per_shard=1)  # 16 training shards: 8 per worker
    stream = _stream(sources.train)
    in_process = list(stream_loader(stream, 0))
    assert _images(in_process) == _images(stream.batches())
    assert _pairs(in_process) == _cache_pairs(sources.train)  # the same images as with workers, below
    for epoch in (0, 1):
        stream.set_epoch(epoch)  # reaches the worker processes, which start afresh each epoch
        simulated = _interleave(*(stream.batches(w, 2) for w in range(2)))
        runs = [list(stream_loader(stream, 2)) for _ in range(2)]
        assert _images(runs[0]) == _images(runs[1]) == _images(simulated)
        assert [b.labels.tolist() for b in runs[0]] == [b.labels.tolist() for b in simulated]
        assert _pairs(runs[0]) == _cache_pairs(sources.train)


def test_the_buffer_shuffles_within_a_shard(tmp_path):
    sources = _sources(tmp_path, per_class=12, per_shard=100)  # one shard, members class by class
    in_member_order = [x.tobytes() for x in build_cache(sources.train, size=SIDE, channels=3, workers=1).images]
    unbuffered = _stream(sources.train, batch_size=1, buffer=1)
    assert _images(unbuffered) == in_member_order  # a buffer of one is the tar's order
    shuffled = list(_stream(sources.train, batch_size=1, buffer=8))
    assert _images(shuffled) != in_member_order and sorted(_images(shuffled)) == sorted(in_member_order)
    labels = [int(b.labels) for b in shuffled]
    assert labels != sorted(labels)  # the classes are mixed, not one after the other


def test_undecodable_images_are_skipped_and_reported(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=4, junk=True)  # 12 images, broken.png, empty.jpg
    write_shards(data, tmp_path / "shards", shard_bytes=10**6)
    sources = shard_sources(tmp_path / "shards", None, val_fraction=0.2, seed=0)
    samples = sources.train + sources.val
    one_by_one = list(_stream(samples, batch_size=1, size=16))
    # 14 members promise 14 batches; the 12 readable images fill them, two of them twice.
    assert len(one_by_one) == 14 and len(set(_images(one_by_one))) == 12
    skipped = [item for b in one_by_one for item in b.skipped]
    assert sorted(Path(item["path"]).suffix for item in skipped) == [".jpg", ".png"]
    paths = {str(s.path) for s in samples}
    assert all(item["path"] in paths and not item["reason"].startswith(item["path"]) for item in skipped)
    # 14 members in batches of 7 promise 2 batches; 12 readable images still fill both (a few repeated).
    stream = _stream(samples, batch_size=7, size=16)
    batches = list(stream)
    assert len(batches) == epoch_steps(stream, 0, 0) == 2
    assert len({x.numpy().tobytes() for b in batches for x in b.images}) == 12
    assert len([item for b in batches for item in b.skipped]) == 2


def test_truncated_or_missing_shards_are_errors(tmp_path):
    sources = _sources(tmp_path, per_class=6, per_shard=3)
    shard = tmp_path / "shards" / "train-00000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: 2048 + 512 + 100])  # cut inside the second image
    with pytest.raises(DataError, match="train-00000.tar: cannot read the shard.*truncated"):
        list(_stream(sources.train, batch_size=1))
    shard.write_bytes(data[:2048])  # cut after the first sample: a shorter tar that reads fine
    with pytest.raises(DataError, match="train-00000.tar.*not found.*truncated"):
        list(_stream(sources.train, batch_size=1))
    shard.unlink()
    with pytest.raises(DataError, match="train-00000.tar: shard not found"):
        stream_shards(sources.train)
    with pytest.raises(DataError, match="not inside a .tar shard"):
        stream_shards([Sample(tmp_path / "data" / "猫" / "000.bmp", 0)])


def test_fewer_shards_than_readers_splits_the_members(tmp_path, caplog):
    sources = _sources(tmp_path, per_class=10, per_shard=10)  # 2 shards of 8 training images each
    assert len(stream_shards(sources.train)) == 2
    streamed = []
    for rank in range(2):
        stream = _stream(sources.train, rank=rank, world=2)
        with caplog.at_level(logging.WARNING, logger="imgcls.data.stream"):
            caplog.clear()
            stream_loader(stream, 2)
        assert ("--shard-size" in caplog.text) == (rank == 0)  # one warning, from the first rank
        batches = [b for w in range(2) for b in stream.batches(w, 2)]
        assert len(batches) == epoch_steps(stream, 2, 0) == 4
        streamed += batches
    assert _pairs(streamed) == _cache_pairs(sources.train)


def test_multi_label_targets_come_out_as_float_rows(tmp_path):
    sources = _sources(tmp_path, per_class=4, per_shard=3)
    samples = [Sample(s.path, -1, (1.0, float(i % 2), float(s.label))) for i, s in enumerate(sources.train)]
    batches = list(_stream(samples, batch_size=2, buffer=3))
    assert all(b.labels.dtype == torch.float32 and b.labels.shape == (2, 3) for b in batches)
    assert _pairs(batches) == _cache_pairs(samples)


def test_stream_shards_group_in_order_of_appearance(tmp_path):
    sources = _sources(tmp_path, per_class=3, per_shard=2, val_fraction=0.4)
    shards = stream_shards(sources.train)
    index = read_index(tmp_path / "shards")
    val_names = {s.path.name for s in sources.val}
    for shard in shards:
        listed = next(s for s in index["splits"]["train"]["shards"] if shard.path.endswith(s["file"]))
        assert list(shard.members) == [tuple(m) for m in listed["members"] if m[0] not in val_names]
    assert [s.path for s in shards] == list(dict.fromkeys(str(s.path.parent) for s in sources.train))


def test_bad_settings_say_what_to_change(tmp_path):
    sources = _sources(tmp_path, per_class=3, per_shard=2)
    with pytest.raises(ConfigError, match="channels"):
        _stream(sources.train, channels=2)
    with pytest.raises(ConfigError, match="rank 2"):
        _stream(sources.train, rank=2, world=2)
    with pytest.raises(DataError, match="no training images"):
        ShardStream([StreamShard("x.tar", ())], batch_size=1, seed=0, size=8, channels=3)
    with pytest.raises(DataError, match="lower the batch size"):
        epoch_steps(_stream(sources.train, batch_size=64), 0, 0)
