"""Decoded images that would not fit in memory go to a memory-mapped file instead.

A dataset of N images at S px with C channels takes N * S * S * C bytes decoded: 47 MB for
Fashion-MNIST's 60,000 at 28 px, but 193 GB for ImageNet's 1.28 million at 224 px.
build_cache asks `spill_file` before it decodes a single image. The cache stays in memory
(the fast path) when twice its size fits in the memory available (the decoded arrays and
the cache they are copied into exist together for a moment, and training needs the rest).
Otherwise it is written, image by image, into an anonymous file (deleted as soon as it is
closed, even by a kill) under $IMGCLS_CACHE_DIR or ~/.cache/imgcls and read back through
the page cache; when that disk lacks the room too, a DataError says what to change.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imgcls.errors import DataError

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "IMGCLS_CACHE_DIR"
COPY_BLOCK = 4096  # images per block when a spilled cache is narrowed to one channel


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What is left under a container's memory limit (cgroup v2, then v1), if there is one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max", or v1's huge number: no limit
            return max(int(limit) - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still take (the smaller of the machine's available
    memory and the container's), or None when the system does not say."""
    known = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    return min(known) if known else None


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls"


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def spill_folder(nbytes: int, desc: str, *, memory_limit: int | None = None, folder: Path | None = None) -> Path | None:
    """None when a cache of `nbytes` fits in memory; else the folder on disk to memory-map it
    from. Raises DataError, before any decoding, when neither has the room."""
    available = memory_limit if memory_limit is not None else available_memory()
    if available is None or 2 * nbytes <= available:
        return None
    folder = Path(folder) if folder is not None else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise DataError(
            f"{desc}: cannot use {folder} for the decoded images ({err.strerror}); "
            f"set {CACHE_DIR_ENV} to a writable folder."
        ) from None
    if nbytes * 1.02 > free:  # the file system's own blocks need a little more
        raise DataError(
            f"{desc}: the decoded images need {_size(nbytes)}, more than half of the {_size(available)} of memory "
            f"available and more than the {_size(free)} free in {folder}. Set {CACHE_DIR_ENV} to a folder with "
            "room, lower --img-size, or train on fewer images."
        )
    log.warning(
        "%s: the decoded images need %s, more than half of the %s of memory available; they go to a "
        "memory-mapped file in %s instead (%s chooses where)",
        desc,
        _size(nbytes),
        _size(available),
        folder,
        CACHE_DIR_ENV,
    )
    return folder


def _anonymous_memmap(folder: Path, shape: tuple[int, ...]) -> np.memmap:
    """A writable array in a file that is deleted as soon as nothing maps it any more."""
    try:
        with tempfile.TemporaryFile(dir=folder) as file:  # the mapping outlives the file object
            return np.memmap(file, dtype=np.uint8, mode="w+", shape=shape)
    except OSError as err:
        raise DataError(
            f"cannot create the decoded-image file in {folder} ({err.strerror}); "
            f"set {CACHE_DIR_ENV} to a writable folder with room."
        ) from None


def fill_memmap(
    decoded: Iterable[list[np.ndarray | str]], folder: Path, count: int, size: int, channels: int | None
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Write decoded chunks straight into a memory-mapped (count, size, size, C) array, so
    memory holds one chunk at a time. Returns (images of the readable rows, their indices,
    {index: reason} of the others); channels None narrows an all-grey cache to one channel."""
    images = _anonymous_memmap(folder, (count, size, size, channels or 3))
    keep: list[int] = []
    reasons: dict[int, str] = {}
    all_grey = True
    index = 0
    for chunk in decoded:
        for result in chunk:
            if isinstance(result, str):
                reasons[index] = result
            else:
                images[len(keep)] = result  # broadcasting repeats a grey channel into three
                all_grey = all_grey and result.shape[-1] == 1
                keep.append(index)
            index += 1
    if channels is None and all_grey and keep:
        grey = _anonymous_memmap(folder, (len(keep), size, size, 1))
        for start in range(0, len(keep), COPY_BLOCK):
            grey[start : start + COPY_BLOCK] = images[start : start + COPY_BLOCK, ..., :1]
        return grey, keep, reasons
    return images[: len(keep)], keep, reasons
