"""Run every benchmark in sequence, each in its own process, then print their summaries.

`make bench` runs this. Each script prints its own table and one `summary:` line; this
collects those lines. The full run takes about 3 minutes on a quiet 2-core machine and
up to 15 when other work shares the cores (most of it train_speed's baseline); --quick
runs train_speed with one epoch and predict_speed on 2,000 images once.

    .venv/bin/python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, args: list[str]) -> tuple[int, float, list[str]]:
    """Run one script, echoing its output; returns (exit status, seconds, summary lines)."""
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True)
    summaries = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("summary:"):
            summaries.append(line.removeprefix("summary:").strip())
    return proc.wait(), time.perf_counter() - start, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, for trying the scripts")
    args = parser.parse_args()
    plan = [
        ("train_speed.py", ["--quick"] if args.quick else []),
        ("predict_speed.py", ["--n", "2000", "--repeats", "1"] if args.quick else []),
        ("compute_ceiling.py", []),
        ("inference_speed.py", ["--repeats", "1"] if args.quick else []),
        ("serve_load.py", ["--requests", "500"] if args.quick else []),
    ]
    results = [(script, *run(script, script_args)) for script, script_args in plan]
    print("\n=== summary")
    failed = 0
    for script, status, seconds, summaries in results:
        state = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"{script:20s} {state}, {seconds:.0f} s")
        for line in summaries:
            print(f"  {line}")
        failed += status != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
