"""The one way imgcls reads an image file's bytes: regular files only, under a size bound,
opened without blocking.

A dataset from elsewhere may hold a FIFO named img.png (opening it would wait for a writer
for ever) or a link to /dev/zero (reading it never ends). Every reader of image files
(training's cache, evaluate, predict, the data doctor, shards, reports) goes through
read_image_file, so none of them can hang or run out of memory on such an entry.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from imgcls.errors import DataError

DEFAULT_MAX_FILE_MB = 256  # data.max_file_mb: larger files are refused before they are read
MB = 2**20

# O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; on a regular
# file it changes nothing. O_NOCTTY keeps a terminal device from becoming our controlling one.
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def max_file_bytes(max_file_mb: float | None) -> int:
    return int((DEFAULT_MAX_FILE_MB if max_file_mb is None else max_file_mb) * MB)


def read_image_file(
    path: str | Path, *, max_bytes: int = DEFAULT_MAX_FILE_MB * MB, name: str | None = None, allow_empty: bool = False
) -> bytes:
    """The bytes of an image file, or DataError naming it: not a regular file, over max_bytes,
    empty (unless allow_empty), or unreadable."""
    name = name or str(path)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a file")
            raise DataError(f"{name}: not a regular file ({kind}); only image files are read.")
        _check_size(name, info.st_size, max_bytes, allow_empty)
        data = _read_at_most(fd, max_bytes + 1)  # one byte over: a file growing while read stays bounded
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror}).") from None
    finally:
        os.close(fd)
    _check_size(name, len(data), max_bytes, allow_empty)
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    parts, total = [], 0
    while total < limit and (chunk := os.read(fd, min(limit - total, 16 * MB))):
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def _check_size(name: str, size: int, max_bytes: int, allow_empty: bool) -> None:
    if size == 0 and not allow_empty:
        raise DataError(f"{name}: empty file (0 bytes).")
    if size > max_bytes:
        raise DataError(
            f"{name}: {size / MB:,.1f} MB is over the limit of {max_bytes / MB:,.0f} MB per image file "
            "(data.max_file_mb); shrink the file or raise the limit."
        )
