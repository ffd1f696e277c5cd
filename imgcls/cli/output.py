"""The command line's printing (used by cli.py and its command groups): text that survives file
names which are not valid UTF-8."""

from __future__ import annotations

import sys


def print_text(text: str = "", *, file=None) -> None:
    """print that survives file names which are not valid UTF-8 (surrogate escapes)."""
    stream = file or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True)
