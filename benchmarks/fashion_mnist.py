"""Time to accuracy on Fashion-MNIST: the fashion-mnist recipe against the default Keras-style CNN.

Writes the full dataset once as PNG class folders (`imgcls data get fashion-mnist`: 60,000
train, 10,000 test, under benchmarks/.data/fashion-mnist/), then runs, each as its own
process, timed from start to exit (decoding, every epoch, checkpoints, metrics and report):

  imgcls train FM/train --val FM/test --recipe fashion-mnist --out RUN      (the goal: >= 0.950 in <= 600 s)
  imgcls train FM/train --val FM/test --model keras-cnn --img-size 28 --out RUN   (baseline: the default recipe)

and prints, per run: whole-run seconds, test accuracy of the best checkpoint (metrics.json;
the validation set is the test set, as in the goal's command), the wall second at which each
epoch's test accuracy was reached (from train.log's timestamps), the first time 0.90 / 0.94
/ 0.95 was reached, and the peak resident memory. A plot of test accuracy against wall
seconds goes to benchmarks/.data/fashion_mnist.png.

    .venv/bin/python benchmarks/fashion_mnist.py [--only recipe|baseline] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
FM = DATA / "fashion-mnist"
IMGCLS = [sys.executable, "-m", "imgcls"]
RUNS = {
    "recipe": ["--recipe", "fashion-mnist"],
    "baseline": ["--model", "keras-cnn", "--img-size", "28"],
}
MARKS = (0.90, 0.94, 0.95)


def fashion_mnist() -> Path:
    if not (FM / ".complete").is_file():
        subprocess.run(["rm", "-rf", str(FM)], check=True)
        subprocess.run([*IMGCLS, "data", "get", "fashion-mnist", "--out", str(FM)], check=True)
        (FM / ".complete").touch()
    return FM


def epoch_times(run: Path, started: float) -> list[float]:
    """Wall seconds since the process started at which each epoch's log line was written."""
    times = []
    for line in (run / "train.log").read_text(encoding="utf-8").splitlines():
        if " epoch " in line and " val loss " in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            times.append(stamp - started)
    return times


def run_one(name: str, extra: list[str]) -> dict:
    out = DATA / "runs" / f"fashion-mnist-{name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [*IMGCLS, "train", str(FM / "train"), "--val", str(FM / "test"), *RUNS[name], *extra, "--out", str(out)]
    print("$ imgcls " + " ".join(cmd[3:]).replace(str(DATA), "benchmarks/.data"), flush=True)
    load = os.getloadavg()[0]
    started = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    history = list(csv.DictReader(open(out / "history.csv", encoding="utf-8")))
    accuracy = [float(row["val_acc"]) for row in history]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    walls = epoch_times(out, started)
    reached = {mark: next((t for t, a in zip(walls, accuracy, strict=True) if a >= mark), None) for mark in MARKS}
    return {
        "name": name,
        "seconds": seconds,
        "accuracy": metrics["accuracy"],
        "epochs": len(history),
        "curve": list(zip(walls, accuracy, strict=True)),
        "reached": reached,
        "peak_mb": peak_mb,
        "load": (load, os.getloadavg()[0]),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, marker="o", label=f"{r['name']}: {r['accuracy']:.4f} in {r['seconds']:.0f} s")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(600, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("wall seconds since the command started")
    ax.set_ylabel("Fashion-MNIST test accuracy")
    ax.set_ylim(0.8, 0.96)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(RUNS), help="run one of the two")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to the recipe run"
    )
    args = parser.parse_args()
    fashion_mnist()
    results = []
    for name in [args.only] if args.only else list(RUNS):
        extra = [item for kv in args.set for item in ("--set", kv)] if name == "recipe" else []
        results.append(run_one(name, extra))
    marks = " ".join(f"{'t@' + str(m):>7s}" for m in MARKS)
    print(f"\n{'run':10s} {'whole s':>8s} {'epochs':>6s} {'test acc':>8s} {marks} {'peak MB':>8s} {'load':>12s}")
    for r in results:
        marks = " ".join(f"{r['reached'][m]:7.0f}" if r["reached"][m] else f"{'-':>7s}" for m in MARKS)
        print(
            f"{r['name']:10s} {r['seconds']:8.1f} {r['epochs']:6d} {r['accuracy']:8.4f} {marks} {r['peak_mb']:8.0f} "
            f"{r['load'][0]:8.1f} / {r['load'][1]:.1f}"
        )
        print("  curve (s, acc): " + ", ".join(f"({t:.0f}, {a:.4f})" for t, a in r["curve"]))
    path = DATA / "fashion_mnist.png"
    plot(results, path)
    print(f"plot: {path.relative_to(HERE.parent)}")
    parts = [f"{r['name']} {r['accuracy']:.4f} in {r['seconds']:.0f} s" for r in results]
    print("summary: fashion_mnist: " + "; ".join(parts))


if __name__ == "__main__":
    main()
