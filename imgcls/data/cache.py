"""Decode every image once, in parallel processes, into one uint8 array.

Epochs then read from memory and never touch Pillow again: on this kind of 2-core machine
the usual per-sample pipeline (PIL decode + transforms in DataLoader workers) trains 3x
slower than the same network fed from memory (see the shared performance notes).
Unreadable files are skipped and recorded with their reason, never fatal. A dataset whose
decoded size would not fit in memory is decoded into a memory-mapped file instead, decided
before the first image is decoded (imgcls.data.spill).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from imgcls.data.decode import decode_image
from imgcls.data.reader import max_file_bytes
from imgcls.data.shards import read_source
from imgcls.data.sources import Sample
from imgcls.data.spill import fill_memmap, spill_folder
from imgcls.errors import DataError
from imgcls.progress import progress_bar
from imgcls.workers import cpu_count, process_pool

log = logging.getLogger(__name__)

CHUNK = 256  # most images per task: large enough to hide inter-process overhead
TASKS_PER_WORKER = 4  # smaller tasks for small sets, so that every worker gets its share
# Worker processes from 1,024 images or from 4 MB of files, whichever comes first: the cost
# of decoding follows the bytes, not the count. A 400x300 JPEG photo of ~25 KB took 2.8-3.4 ms
# of CPU to decode, 50-100x a 28-px PNG of a few hundred bytes, against ~0.4 ms per image that
# processes add (forking, sending the pixels back): 4 MB of such photos, ~170, is half a
# second of decoding in one process.
MIN_PARALLEL = 1024
MIN_PARALLEL_BYTES = 4 * 2**20


@dataclass
class ImageCache:
    images: np.ndarray  # (N, H, W, C) uint8: channels-last, as convolutions want it on CPU
    labels: np.ndarray  # (N,) int64 class indices; multi-label: (N, K) float32 0/1 targets
    paths: list[str]  # the file of each row, for galleries and error reports
    skipped: list[dict] = field(default_factory=list)  # [{"path", "reason"}]

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)


def _decode_chunk(
    paths: list[str], size: int, resize: str, channels: int | None, max_pixels: int, max_bytes: int, **resample
) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            source = read_source(path, max_bytes)  # SHARD.tar/MEMBER: read out of the tar (imgcls.data.shards)
            out.append(
                decode_image(
                    source,
                    size=size,
                    resize=resize,
                    channels=channels,
                    max_pixels=max_pixels,
                    name=path,
                    max_bytes=max_bytes,
                    **resample,
                )
            )
        except DataError as err:
            out.append(str(err).removeprefix(f"{path}: "))  # the path is recorded beside the reason
    return out


def _file_bytes(paths: Sequence[str], enough: int) -> int:
    """The files' total size, counted until it reaches `enough` (a member of a tar shard,
    which os.stat cannot see, counts 0)."""
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except OSError:
            continue
        if total >= enough:
            break
    return total


def parallel_pays(paths: Sequence[str], workers: int) -> bool:
    """Whether decoding `paths` in `workers` processes beats one: enough images or enough bytes."""
    if workers <= 1:
        return False
    return len(paths) >= MIN_PARALLEL or _file_bytes(paths, MIN_PARALLEL_BYTES) >= MIN_PARALLEL_BYTES


def _chunks(paths: list[str], workers: int, parallel: bool) -> list[list[str]]:
    size = min(CHUNK, -(-len(paths) // (workers * TASKS_PER_WORKER))) if parallel else CHUNK
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _decoded_chunks(chunks: list[list[str]], work, workers: int, total: int, desc: str) -> Iterator[list]:
    """Each chunk's decoded arrays (or reasons), in order, from worker processes when workers > 1."""
    bar = progress_bar(total=total, desc=desc, unit="img")
    try:
        if workers > 1:
            with process_pool(workers) as pool:
                for chunk_result in pool.map(work, chunks):
                    bar.update(len(chunk_result))
                    yield chunk_result
        else:
            for chunk in chunks:
                chunk_result = work(chunk)
                bar.update(len(chunk_result))
                yield chunk_result
    finally:
        bar.close()


def _in_memory(
    decoded: Iterator[list], size: int, channels: int | None
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """The fast path: every decoded array, then one array holding them all."""
    results = [result for chunk in decoded for result in chunk]
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    reasons = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    arrays = [results[i] for i in keep]
    target = channels or (1 if all(a.shape[-1] == 1 for a in arrays) else 3)
    images = np.empty((len(arrays), size, size, target), dtype=np.uint8)
    for row, array in enumerate(arrays):
        images[row] = array  # broadcasting repeats a grey channel into three
    return images, keep, reasons


def build_cache(
    samples: Sequence[Sample],
    *,
    size: int,
    resize: str = "crop",
    channels: int | None = None,
    max_pixels: int = 64_000_000,
    max_file_mb: float | None = None,
    workers: int = 0,
    desc: str = "decode",
    memory_limit: int | None = None,
    spill_dir: str | Path | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
) -> ImageCache:
    """Decode and resize samples into an ImageCache.

    channels None chooses: 1 when every readable image is grey, else 3 (grey images are
    then repeated into three channels, exactly as Pillow's L -> RGB conversion does).
    The images are kept in memory unless twice their decoded size is more than
    `memory_limit` (default: the memory available); then in a memory-mapped file in
    `spill_dir` (default: $IMGCLS_CACHE_DIR or ~/.cache/imgcls).
    """
    paths = [str(s.path) for s in samples]
    if not paths:
        raise DataError("no images to decode.")
    workers = workers or cpu_count()
    workers = workers if parallel_pays(paths, workers) else 1
    chunks = _chunks(paths, workers, parallel=workers > 1)
    limits = {"max_pixels": max_pixels, "max_bytes": max_file_bytes(max_file_mb)}
    resample = {"crop_pct": crop_pct, "interpolation": interpolation}
    work = partial(_decode_chunk, size=size, resize=resize, channels=channels, **limits, **resample)
    nbytes = len(paths) * size * size * (channels or 3)
    folder = spill_folder(nbytes, desc, memory_limit=memory_limit, folder=Path(spill_dir) if spill_dir else None)
    decoded = _decoded_chunks(chunks, work, workers, len(paths), desc)
    if folder is None:
        images, keep, reasons = _in_memory(decoded, size, channels)
    else:
        images, keep, reasons = fill_memmap(decoded, folder, len(paths), size, channels)
    skipped = [{"path": paths[i], "reason": reason} for i, reason in sorted(reasons.items())]
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    if not keep:
        first = skipped[0]
        raise DataError(f"none of the {len(paths)} images could be decoded; first: {first['path']}: {first['reason']}")
    if samples[keep[0]].targets is not None:  # multi-label: one 0/1 row per image
        labels = np.array([samples[i].targets for i in keep], dtype=np.float32)
    else:
        labels = np.array([samples[i].label for i in keep], dtype=np.int64)
    return ImageCache(images=images, labels=labels, paths=[paths[i] for i in keep], skipped=skipped)
