"""Run every benchmark in sequence, each in its own process, then print their summaries.

`make bench` runs this. Each script prints its own table and one `summary:` line; this
collects those lines. The full run takes about 20 minutes on a quiet 2-core machine (12 of
them fashion_mnist.py's two trainings) and far longer when other work shares the cores;
--quick skips fashion_mnist.py and shortens the others; --all adds the capability benchmarks
(server soak, distributed, multi-label, data doctor, recognition, semi-supervised, transfer,
distillation, small data, classic baseline).

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
    parser.add_argument("--all", action="store_true", help="also the capability benchmarks (an hour or more)")
    args = parser.parse_args()
    plan = [
        ("train_speed.py", ["--quick"] if args.quick else []),
        ("predict_speed.py", ["--n", "2000", "--repeats", "1"] if args.quick else []),
        ("compute_ceiling.py", []),
        (
            "compute_ceiling.py",
            [
                "--model",
                "small-net",
                "--width",
                "48",
                "--batch",
                "128",
                "--sgd",
                "--steps",
                "30" if args.quick else "60",
            ],
        ),  # the fashion-mnist recipe's step
        ("inference_speed.py", ["--repeats", "1"] if args.quick else []),
        ("serve_load.py", ["--requests", "500"] if args.quick else []),
    ]
    if not args.quick:  # ten minutes of both cores: the time-to-accuracy goal itself
        plan.append(("fashion_mnist.py", []))
    if args.all:  # what each capability reaches on real data; RESULTS.md records them
        plan += [
            (script, [])
            for script in (
                "soak.py",
                "distributed.py",
                "multilabel.py",
                "data_doctor.py",
                "recognition.py",
                "semi_supervised.py",
                "transfer.py",
                "distillation.py",
                "small_data.py",
                "classic_baseline.py",
            )
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
