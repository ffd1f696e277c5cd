"""Files a run or a command writes: atomically, so a crash or a full disk never leaves half of one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from imgcls.errors import DataError, ImgclsError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: a crash or a
    full disk leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files should read like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def path_under(folder: Path, *parts: str) -> Path:
    """folder/parts..., refused (ImgclsError) unless it stays under folder once resolved: every
    path imgcls writes from a name it was given (a class, a plan row) goes through this."""
    folder = Path(folder).resolve()
    target = folder.joinpath(*parts).resolve()
    if target == folder or folder not in target.parents:
        shown = os.path.join(*parts) if parts else ""
        raise DataError(f"{shown!r} would be written outside {folder}; refused.")
    return target


LOCK_NAME = ".imgcls.lock"


@contextmanager
def exclusive_use(folder: Path, what: str):
    """Hold an exclusive lock on folder (a run, a gallery) for the block, or raise ImgclsError at once
    when another process holds it. filelock's lock dies with its process, so a killed run never
    leaves a stale lock behind."""
    lock = FileLock(Path(folder) / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ImgclsError(
            f"another imgcls run is using {folder} ({what}); wait for it to end, or choose another folder."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, value: dict) -> None:
    """Atomically write JSON; file names that are not valid UTF-8 are written escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    atomic_write_bytes(Path(path), text.encode("utf-8", "backslashreplace"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in 1 MB blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()
