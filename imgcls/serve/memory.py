"""The server's memory budget: what decoding uploads may take, and giving it back afterwards.

An upload's size says little about its decoded size: a 186 kB PNG of 7999 x 7999 pixels
decodes to about 330 MB, and 16 of them at once took 5.8 GB. So the server
- refuses images over a pixel limit lower than training's (SERVE_MAX_PIXELS, `--max-pixels`);
- lets at most budget / (limit x PEAK_BYTES_PER_PIXEL) decodes run at once (DecodeSlots); the
  others wait up to SLOT_WAIT_SECONDS, then get 503;
- returns freed memory to the system when no decode is running (release_free_memory).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)

SERVE_MAX_PIXELS = 16_000_000  # a 4000 x 4000 photo; training's default is 64 M
DEFAULT_DECODE_BUDGET_MB = 768  # on top of the model's own memory
# Measured on PNG and JPEG uploads at the limit (benchmarks/soak.py): Pillow keeps 4 bytes a
# pixel for RGB; alpha compositing and mode conversion hold up to four such copies at once.
PEAK_BYTES_PER_PIXEL = 16
SLOT_WAIT_SECONDS = 30.0

# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


class ServerBusy(Exception):
    """No decode slot freed up in time."""


class DecodeSlots:
    """A semaphore sized from the memory budget, counting decodes in flight."""

    def __init__(self, budget_mb: float, max_pixels: int, wait_seconds: float | None = None):
        self.size = max(1, int(budget_mb * 2**20 // (max_pixels * PEAK_BYTES_PER_PIXEL)))
        self.wait_seconds = SLOT_WAIT_SECONDS if wait_seconds is None else wait_seconds
        self._semaphore = asyncio.Semaphore(self.size)
        self._in_flight = 0

    @asynccontextmanager
    async def slot(self):
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.wait_seconds)
        except TimeoutError:
            raise ServerBusy(f"the server is busy decoding other images (waited {self.wait_seconds:.0f} s)") from None
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._semaphore.release()
            if self._in_flight == 0:  # a burst is over: hand its memory back
                release_free_memory()


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def tune_allocator() -> None:
    """Make glibc give large blocks back when they are freed. Written by hand: no library wraps
    mallopt. By default glibc raises its mmap threshold after the first large free, so later
    decoded images land on heaps that are never returned (5.0 GB stayed held after a burst), and
    every thread of the pool gets its own heap. A fixed 1 MB threshold maps large blocks
    separately (unmapped on free); two heaps bound the fragmentation of many threads."""
    if _LIBC is None:
        return
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    _LIBC.mallopt(_M_ARENA_MAX, 2)


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc's malloc_trim; elsewhere nothing)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
