"""The command line's printing (used by cli.py and its command groups): text that survives file
names which are not valid UTF-8."""

from __future__ import annotations

import argparse
import logging
import re
import sys

# Control characters other than newline and tab: a file named with terminal escape sequences
# (ESC [ 2 J clears the screen, ESC ] 0 ; sets the window title) must not drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def print_text(text: str = "", *, file=None) -> None:
    """print that survives file names which are not valid UTF-8 (surrogate escapes) and shows
    control characters in them as \\xNN instead of sending them to the terminal."""
    stream = file or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(printable(text).encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit code 2), like every other imgcls error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def duration(text: str) -> float:
    """Seconds of '90s', '10m', '1.5h' or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    scale = units.get(text[-1:], 1)
    try:
        value = float(text[:-1] if text[-1:] in units else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 1.5h") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {value}")
    return value


class PrintableFormatter(logging.Formatter):
    """Log lines with file names' control characters shown as \\xNN (see printable)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def headline(m: dict) -> str:
    """The metrics a user reads first, on one line."""
    if m.get("task") == "multi-label":
        return (
            f"mAP {m['mAP'] or 0:.4f}  micro-F1 {m['micro_f1']:.4f}  subset accuracy {m['subset_accuracy']:.4f}"
            f"  on {m['num_samples']}"
        )
    top5 = f"  top-5 {m['top5_accuracy']:.4f}" if m.get("top5_accuracy") is not None else ""
    return f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}{top5}  on {m['num_samples']}"
