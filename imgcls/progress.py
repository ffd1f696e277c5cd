"""The one progress-bar helper: tqdm on stderr with rate and ETA.

Bars are shown when stderr is a terminal and hidden otherwise (CI logs, tests,
pipes), unless IMGCLS_PROGRESS=1 forces them on or IMGCLS_PROGRESS=0 off.
"""

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _enabled() -> bool:
    forced = os.environ.get("IMGCLS_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar with count, rate and ETA: iterate over it, or call .update(n) and .close()."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
        disable=not _enabled(),
    )


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar."""
    return iter(progress_bar(iterable, total=total, desc=desc, unit=unit))
