"""Training from tar shards streamed through a shuffle buffer (imgcls.data.stream), for a
training set whose decoded images would not fit in memory.

`data.stream`: auto streams shards when twice the decoded training images of all processes
on this machine would not fit in the memory available (the rule that keeps a cache in
memory); always streams shards; never decodes them into the cache (in memory, else a
memory-mapped file). Class folders are never streamed: shards are what make a front-to-back
read possible.

A streamed run knows its training set from the shards' index: labels, counts and paths,
without decoding. The channel count (when data.channels is auto) and the normalisation
statistics come from a sample of up to SAMPLE images spread over the shards; the validation
set is decoded into the cache as usual, since it is read every epoch in full.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch

from imgcls.config import Config, DataConfig
from imgcls.data.cache import ImageCache, build_cache
from imgcls.data.preprocess import channel_stats
from imgcls.data.shards import is_shard_folder
from imgcls.data.sources import DataSources
from imgcls.data.spill import available_memory
from imgcls.data.stream import ShardStream, epoch_steps, stream_loader, stream_shards
from imgcls.errors import ConfigError
from imgcls.training import distributed
from imgcls.workers import cpu_count

log = logging.getLogger(__name__)

SAMPLE = 2048  # images decoded up front for the channel count and the mean/std


def use_stream(config: Config, sources: DataSources) -> bool:
    data = config.data
    if data.stream == "never":
        return False
    if not is_shard_folder(data.train):
        if data.stream == "always":
            raise ConfigError(
                f"data.stream=always streams tar shards, and {data.train} is not a shard folder. Write "
                "them with `imgcls data shard DATA --out SHARDS` and train on SHARDS."
            )
        return False
    if data.stream == "always":
        return True
    channels = 3 if data.channels == "auto" else int(data.channels)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each process would hold its own cache
    nbytes = len(sources.train) * data.img_size**2 * channels * processes
    available = available_memory()
    if available is None or 2 * nbytes <= available:
        return False
    log.info(
        "streaming the training shards: their decoded images (%.1f GB for %d process(es)) would not fit in "
        "memory (%.1f GB available)",
        nbytes / 1e9,
        processes,
        available / 1e9,
    )
    return True


def check_stream_config(config: Config) -> None:
    """Options that need the whole training set in memory, refused before anything is read."""
    refused = [("train.balanced_sampling", config.train.balanced_sampling), ("--unlabeled", config.semi.unlabeled)]
    given = [name for name, value in refused if value]
    if given:
        raise ConfigError(
            f"{', '.join(given)} draw from the whole training set at random; a streamed run "
            "reads shards front to back. Set data.stream=never to decode the training set."
        )


def streamed_training_set(config: Config, sources: DataSources) -> tuple[ImageCache, ShardStream, tuple]:
    """(the training set without its pixels, the stream of its batches, (mean, std) of a sample)."""
    check_stream_config(config)
    data, tc = config.data, config.train
    step = max(1, len(sources.train) // SAMPLE)
    sample = build_cache(
        sources.train[::step][:SAMPLE],
        size=data.img_size,
        resize=data.resize,
        channels=None if data.channels == "auto" else int(data.channels),
        max_pixels=data.max_pixels,
        workers=data.decode_workers,
        desc="decode sample",
    )
    multilabel = sources.train[0].targets is not None
    labels = np.array(
        [s.targets if multilabel else s.label for s in sources.train], dtype=np.float32 if multilabel else np.int64
    )
    empty = np.empty((0, data.img_size, data.img_size, sample.channels), dtype=np.uint8)
    train = ImageCache(empty, labels, [str(s.path) for s in sources.train])
    world = distributed.world_size()
    if tc.batch_size % world:
        log.warning(
            "train.batch_size %d is not a multiple of the %d processes: each takes %d images a step",
            tc.batch_size,
            world,
            tc.batch_size // world,
        )
    stream = ShardStream(
        stream_shards(sources.train),
        batch_size=max(1, tc.batch_size // world),
        seed=tc.seed,
        size=data.img_size,
        channels=sample.channels,
        resize=data.resize,
        max_pixels=data.max_pixels,
        buffer=data.stream_buffer,
        rank=distributed.rank(),
        world=world,
    )
    log.info(
        "streaming %d training images from %d shard(s); shuffle buffer %d, %d reader(s) a process; channels "
        "and mean/std from a sample of %d",
        len(train),
        len(stream.shards),
        data.stream_buffer,
        stream_workers(config.data),
        len(sample),
    )
    return train, stream, channel_stats(sample.images)


def stream_workers(data: DataConfig) -> int:
    """Reader processes per training process: data.decode_workers, else the cores shared out."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return data.decode_workers or max(1, cpu_count() // local)


def stream_epoch(
    stream: ShardStream, train: ImageCache, epoch: int, workers: int, start: int
) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(steps of this epoch, its (images, labels) batches from step `start` on). Images that
    failed to decode join train.skipped once each, as the cache path records them."""
    stream.set_epoch(epoch)
    steps = epoch_steps(stream, workers, epoch)
    known = {item["path"] for item in train.skipped}

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start:
            log.info("re-reading the first %d batches of epoch %d to continue after them", start, epoch)
        for i, batch in enumerate(itertools.islice(stream_loader(stream, workers), steps)):
            for item in batch.skipped:
                if item["path"] not in known:
                    known.add(item["path"])
                    train.skipped.append(item)
            if i >= start:
                yield batch.images, batch.labels

    return steps, batches()
