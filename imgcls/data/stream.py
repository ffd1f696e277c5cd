"""Training batches streamed out of tar shards, for datasets larger than memory and disk cache.

The decode cache (imgcls.data.cache) decodes every image once and trains from memory: fastest
while the decoded images fit. Past that, ShardStream decodes as it trains. Each reader (one per
DataLoader worker of each DDP rank) reads its own shards front to back, decodes and resizes each
image, shuffles through a buffer and yields ready uint8 batches.

Why a shuffle buffer: reading a tar front to back is one long read of a big file, which is what
makes shards fast (on disks, network file systems, object stores); a random order would be one
seek per image again. The price is that a reader meets a shard's images in the order they were
written. A new shard order every epoch, and a buffer of `buffer` images from which a random one
leaves each time one arrives (as WebDataset does), restore most of the randomness of a full
permutation; a bigger buffer mixes more shards together.

Memory: a reader holds its buffer and about two batches (the one it fills, and the last one,
kept to make up for skipped images): (buffer + 2 x batch_size) x size x size x channels bytes
per worker, 2048 images of 224 x 224 x 3 are 300 MB, whatever the size of the dataset. The
DataLoader queues at most prefetch_factor (2) finished batches per worker.

Splitting: the world x workers readers take the epoch's permuted shards in turn (with fewer
shards than readers, every reader reads every shard and decodes every slots-th image). DDP needs
every process to take every step, so epoch_steps() counts, from the index alone, the full
batches each rank can yield and takes the minimum over ranks; the trainer stops every rank after
that many. An epoch thus covers every training image at most once, and exactly once when each
reader's image count is a multiple of the batch size (a reader's last partial batch is dropped,
like the cache path's shuffled batches).

An image that cannot be decoded is skipped, logged, and reported in the `skipped` list of the
batch being filled; the reader then repeats a few of its images so that it still yields every
batch epoch_steps() counted on (a rank that ran out early would leave the others waiting for
ever). A shard that cannot be read (missing, truncated) is a DataError: a whole part of the
dataset, not one image.
"""

from __future__ import annotations

import logging
import multiprocessing
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imgcls.data.decode import decode_image
from imgcls.data.shards import shard_member
from imgcls.data.sources import Sample
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Label = int | tuple[float, ...]  # a class index, or 0/1 targets of a multi-label sample


@dataclass(frozen=True)
class StreamShard:
    path: str  # the .tar file
    members: tuple[tuple[str, Label], ...]  # (member name, label) of the samples to stream


def stream_shards(samples: Sequence[Sample]) -> list[StreamShard]:
    """Group samples whose path is SHARD.tar/MEMBER by shard, in order of first appearance.

    Only the given samples are streamed: the members of a shard that are validation samples
    are left out. DataError if a sample is not inside a shard.
    """
    grouped: dict[str, list[tuple[str, Label]]] = {}
    for sample in samples:
        inside = shard_member(sample.path)
        if inside is None:
            shard = Path(sample.path).parent
            if shard.suffix == ".tar":
                raise DataError(f"{shard}: shard not found; copy it back or write the shards again.")
            raise DataError(
                f"{sample.path} is not inside a .tar shard; streaming reads shards only "
                "(write them with `imgcls data shard DATA --out SHARDS`)."
            )
        shard, member = inside
        label = sample.targets if sample.targets is not None else sample.label
        grouped.setdefault(str(shard), []).append((member, label))
    return [StreamShard(path, tuple(members)) for path, members in grouped.items()]


@dataclass
class StreamBatch:
    images: torch.Tensor  # (n, size, size, C) uint8, channels-last like the cache
    labels: torch.Tensor  # (n,) int64, or (n, K) float32 for multi-label
    skipped: list[dict] = field(default_factory=list)  # [{"path": SHARD.tar/MEMBER, "reason"}]


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([key % 2**64 for key in keys])  # SeedSequence wants non-negative keys


def _shard_order(shards: Sequence[StreamShard], seed: int, epoch: int) -> list[StreamShard]:
    """This epoch's shard order: the same in every rank and worker."""
    return [shards[i] for i in _rng(seed, epoch).permutation(len(shards))]


def _reader_parts(order: list[StreamShard], slot: int, slots: int) -> list[tuple[str, dict[str, Label]]]:
    """(shard path, {member: label} to decode) of reader `slot` of `slots`, in reading order."""
    if len(order) >= slots:
        return [(shard.path, dict(shard.members)) for shard in order[slot::slots]]
    parts, start = [], 0
    for shard in order:  # fewer shards than readers: split the members instead
        owned = {name: label for i, (name, label) in enumerate(shard.members, start) if i % slots == slot}
        start += len(shard.members)
        if owned:
            parts.append((shard.path, owned))
    return parts


def _reader_count(order: list[StreamShard], slot: int, slots: int) -> int:
    """How many images reader `slot` owns, without building its parts."""
    if len(order) >= slots:
        return sum(len(shard.members) for shard in order[slot::slots])
    return len(range(slot, sum(len(shard.members) for shard in order), slots))


def _read_members(path: str, owned: dict[str, Label]) -> Iterator[tuple[str, bytes]]:
    """The owned members' bytes in the order the tar holds them, in one sequential read."""
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if info.name in owned and info.isfile():  # .cls files and validation samples are passed over
                    yield info.name, tar.extractfile(info).read()
                    seen.add(info.name)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read the shard ({err}); it may be truncated or damaged. "
            "Copy it again or write the shards again with `imgcls data shard`."
        ) from None
    missing = [name for name in owned if name not in seen]
    if missing:  # a tar cut at a member boundary reads as a shorter, valid tar
        raise DataError(
            f"{path}: member {missing[0]!r} (and {len(missing) - 1} more) not found; the shard may "
            "be truncated, or it and index.json disagree. Write the shards again."
        )


def _pop_random(buffer: list, rng: np.random.Generator):
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]  # O(1): the order inside the buffer does not matter
    return buffer.pop()


def _shuffle(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Items through a shuffle buffer of `size`; skip reports (dicts) pass straight through."""
    buffer: list = []
    for item in items:
        if isinstance(item, dict):
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= size:
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


class ShardStream(IterableDataset):
    """Decoded, shuffled uint8 batches from shards; one share of them per rank and worker."""

    def __init__(
        self,
        shards: list[StreamShard],
        *,
        batch_size: int,
        seed: int,
        size: int,
        channels: int,
        resize: str = "crop",
        max_pixels: int = 64_000_000,
        buffer: int = 2048,
        rank: int = 0,
        world: int = 1,
    ):
        if not any(shard.members for shard in shards):
            raise DataError("no training images to stream; check the shards' index.json.")
        if channels not in (1, 3):
            raise ConfigError(f"channels is {channels}; streaming needs 1 (grey) or 3 (colour).")
        if batch_size < 1 or buffer < 1:
            raise ConfigError(f"batch size {batch_size} and shuffle buffer {buffer} must both be at least 1.")
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not one of the {world} processes.")
        self.shards = list(shards)
        self.batch_size, self.seed, self.size, self.channels = batch_size, seed, size, channels
        self.resize, self.max_pixels, self.buffer = resize, max_pixels, buffer
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        # Worker processes start afresh each epoch (no persistent workers), with this epoch.
        self.epoch = epoch

    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        return self.batches(info.id, info.num_workers) if info else self.batches()

    def batches(self, worker: int = 0, workers: int = 1) -> Iterator[StreamBatch]:
        """The batches of one reader: worker `worker` of `workers` in this rank."""
        slots, slot = self.world * workers, self.rank * workers + worker
        parts = _reader_parts(_shard_order(self.shards, self.seed, self.epoch), slot, slots)
        promised = sum(len(owned) for _, owned in parts) // self.batch_size
        rng = _rng(self.seed, self.epoch, self.rank, worker)
        batch, skipped, last, made = [], [], [], 0
        for item in _shuffle(self._decoded(parts), self.buffer, rng):
            if isinstance(item, dict):
                skipped.append(item)
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._batch(batch, skipped)
                batch, skipped, last, made = [], [], batch, made + 1
        pool = batch + last  # images lost to decode errors: repeat some to keep the promised steps
        if made < promised and not pool:
            raise DataError(
                f"none of the images in {', '.join(path for path, _ in parts)} could be decoded; "
                "check them with `imgcls data doctor` or write the shards again."
            )
        for _ in range(promised - made):
            batch += [pool[int(i)] for i in rng.integers(len(pool), size=self.batch_size - len(batch))]
            yield self._batch(batch, skipped)
            batch, skipped = [], []

    def _decoded(self, parts: list[tuple[str, dict[str, Label]]]) -> Iterator[tuple[np.ndarray, Label] | dict]:
        for path, owned in parts:
            for name, data in _read_members(path, owned):
                where = str(Path(path, name))
                try:
                    image = decode_image(
                        data,
                        size=self.size,
                        resize=self.resize,
                        channels=self.channels,
                        max_pixels=self.max_pixels,
                        name=where,
                    )
                except DataError as err:
                    reason = str(err).removeprefix(f"{where}: ")  # the path is recorded beside the reason
                    log.warning("skipped %s: %s", where, reason)
                    yield {"path": where, "reason": reason}
                    continue
                yield image, owned[name]

    @staticmethod
    def _batch(items: list[tuple[np.ndarray, Label]], skipped: list[dict]) -> StreamBatch:
        images = torch.from_numpy(np.stack([image for image, _ in items]))
        labels = [label for _, label in items]
        dtype = torch.float32 if isinstance(labels[0], tuple) else torch.int64
        return StreamBatch(images, torch.tensor(labels, dtype=dtype), skipped)


def epoch_steps(stream: ShardStream, workers: int, epoch: int) -> int:
    """Batches every rank can yield in this epoch: the same number for all ranks, since DDP needs
    every process to take every step. Counted from the index, without opening a tar: per rank
    the sum of floor(reader's images / batch size) over its readers, then the minimum over ranks.
    So an epoch covers every image at most once, and exactly once when each reader's count is a
    multiple of the batch size. DataError when some rank would have no batch at all."""
    workers = max(1, workers)
    slots = stream.world * workers
    order = _shard_order(stream.shards, stream.seed, epoch)
    per_reader = [_reader_count(order, slot, slots) // stream.batch_size for slot in range(slots)]
    steps = min(sum(per_reader[rank * workers : (rank + 1) * workers]) for rank in range(stream.world))
    if steps == 0:
        raise DataError(
            f"a rank gets less than one batch of {stream.batch_size} images from "
            f"{len(stream.shards)} shard(s) split over {stream.world} process(es) x {workers} "
            "worker(s); lower the batch size or the number of workers."
        )
    return steps


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers only decode; torch threads would fight the training threads


def stream_loader(stream: ShardStream, workers: int) -> DataLoader:
    """A DataLoader over the stream: `workers` processes decoding, 0 = in the main process.

    Batches arrive in a fixed worker order (round robin), so a run is reproducible. Workers are
    not persistent: each epoch forks them again, carrying the epoch set with set_epoch."""
    readers = stream.world * max(1, workers)
    if stream.rank == 0 and len(stream.shards) < readers:  # said once, by the first process
        log.warning(
            "%d shard(s) for %d readers (processes x workers): every reader reads every shard to decode "
            "its share. More shards would save reading: write more, smaller shards with "
            "`imgcls data shard --shard-size`.",
            len(stream.shards),
            readers,
        )
    context = None
    if workers > 0:  # fork starts workers in milliseconds (as imgcls.data.cache.process_pool does)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        multiprocessing_context=context,
    )
