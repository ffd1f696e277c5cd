"""Follow `imgcls train` as a reader would: count the calls between imgcls modules in a tiny
run, and those that climb back up (into a module already on the stack above the caller's own:
a callback, or a class defined above). Issue 18 asked for this count; run it after changing
the training wing.

    PYTHONPATH=. .venv/bin/python scripts/call_walk.py [--calls 400]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from imgcls.cli.main import main
from tests.helpers import make_class_folders


def walk(limit: int) -> tuple[list, list]:
    tmp = Path(tempfile.mkdtemp())
    data = make_class_folders(tmp / "data", per_class=8, junk=False)
    calls, climbs, stack = [], [], []

    def profile(frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            inside = module.startswith("imgcls")
            caller = next((m for m in reversed(stack) if m), None)
            if inside and caller and caller != module and len(calls) < limit:
                calls.append((caller, module, frame.f_code.co_name))
                if module in {m for m in stack if m and m != caller}:
                    climbs.append(calls[-1])
            stack.append(module if inside else None)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        main(
            [
                "-q",
                "train",
                str(data),
                "--out",
                str(tmp / "run"),
                "--model",
                "lenet",
                "--img-size",
                "16",
                "--epochs",
                "1",
            ]
        )
    finally:
        sys.setprofile(None)
    return calls, climbs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls between modules to follow (400)")
    calls, climbs = walk(parser.parse_args().calls)
    print(f"{len(calls)} calls between imgcls modules, {len(climbs)} climb back up:")
    for caller, callee, name in climbs:
        print(f"  {caller} -> {callee}.{name}")
