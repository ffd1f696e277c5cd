"""Semi-supervised (FixMatch) against supervised training on the same few labels, Fashion-MNIST.

Data, from the class folders of benchmarks/.data/fashion-mnist (`imgcls data get fashion-mnist`),
chosen with numpy seed 0 and linked (symlinks) under benchmarks/.data/semi-K/:
  val/       20 training images per class (200), the same for every run: checkpoint selection only
  train/     K labelled training images per class (K = 10, 100; the 10 are among the 100)
  unlabeled/ every other training image (59,800 - 10 K), labels not used; each run decodes a
             seeded random subset of --unlabeled-subset of them (semi.max_unlabeled), for time
  test       the 10,000 test images, used only by `imgcls evaluate` at the end
Runs, all keras-cnn at 28 px, --seed 0, one torch thread (train.threads=1):
  semi:       imgcls train semi-K/train --val semi-K/val --unlabeled semi-K/unlabeled
              --set semi.max_unlabeled=N --epochs E --batch-size 64  (FixMatch, threshold 0.95, mu 7)
  supervised: imgcls train semi-K/train --val semi-K/val --batch-size 16 --epochs S, with S
              chosen so that its training time matches the semi run's (calibrated from a 5-epoch
              run), at most MAX_SUPERVISED_EPOCHS (its history.csv shows whether it still improved)
Each best.safetensors is evaluated with `imgcls evaluate RUN/best.safetensors TEST --json`.

    .venv/bin/python benchmarks/semi_supervised.py [--labels 10 100] [--epochs 30] [--unlabeled-subset 17920]
        [--method fixmatch|pseudo]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RUNS = DATA / "runs"
SOURCE = DATA / "fashion-mnist"
VAL_PER_CLASS = 20
MAX_SUPERVISED_EPOCHS = 400
# keras-cnn with one torch thread: 0.16 s per 960-image step against small-net's 2.2 s on these shared cores.
COMMON = ["--model", "keras-cnn", "--img-size", "28", "--seed", "0", "--set", "train.threads=1", "-q"]


def build_folders(k: int) -> Path:
    """semi-K/{train,val,unlabeled}: symlinks into the Fashion-MNIST training folders (numpy seed 0)."""
    root = DATA / f"semi-{k}"
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for folder in sorted(p for p in (SOURCE / "train").iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        order = rng.permutation(len(files))  # the same draw for every K: val and the first K are shared
        parts = {
            "val": order[:VAL_PER_CLASS],
            "train": order[VAL_PER_CLASS : VAL_PER_CLASS + k],
            "unlabeled": order[VAL_PER_CLASS + k :],
        }
        for part, indices in parts.items():
            target = root / part / folder.name
            target.mkdir(parents=True)
            for i in indices:
                os.symlink(files[i], target / files[i].name)
    (root / "done").write_text("ok")
    return root


def train(name: str, *args) -> tuple[Path, float]:
    out = RUNS / name
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "imgcls", "train", *map(str, args), *COMMON, "--out", str(out)]
    print("$", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return out, time.perf_counter() - start


def train_seconds(run: Path) -> float:
    with open(run / "history.csv", encoding="utf-8") as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f))


def test_accuracy(run: Path) -> float:
    command = [
        sys.executable,
        "-m",
        "imgcls",
        "evaluate",
        str(run / "best.safetensors"),
        str(SOURCE / "test"),
        "--json",
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["accuracy"]


def compare(k: int, epochs: int, subset: int, method: str = "fixmatch") -> list[tuple]:
    root = build_folders(k)
    labelled = ["--val", root / "val"]
    unlabeled = ["--unlabeled", root / "unlabeled", "--semi", method, "--set", f"semi.max_unlabeled={subset}"]
    semi, semi_wall = train(
        f"semi-{k}-{method}-e{epochs}", root / "train", *labelled, *unlabeled, "--epochs", epochs, "--batch-size", 64
    )
    budget = train_seconds(semi)
    probe, _ = train(f"semi-{k}-probe-e{epochs}", root / "train", *labelled, "--epochs", 5, "--batch-size", 16)
    per_epoch = train_seconds(probe) / 5
    sup_epochs = max(5, min(MAX_SUPERVISED_EPOCHS, round(budget / per_epoch)))
    sup, sup_wall = train(
        f"semi-{k}-supervised-e{epochs}", root / "train", *labelled, "--epochs", sup_epochs, "--batch-size", 16
    )
    return [
        (k, f"{method}, {epochs} epochs over {subset} unlabeled", test_accuracy(semi), budget, semi_wall),
        (k, f"supervised, {sup_epochs} epochs, batch 16", test_accuracy(sup), train_seconds(sup), sup_wall),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[10, 100], help="labelled images per class")
    parser.add_argument("--method", choices=["fixmatch", "pseudo"], default="fixmatch", help="--semi of the runs")
    parser.add_argument("--epochs", type=int, default=30, help="FixMatch epochs (passes over the unlabeled subset)")
    parser.add_argument("--unlabeled-subset", type=int, default=17920, help="unlabeled images each run decodes")
    args = parser.parse_args()
    if not (SOURCE / "train").is_dir():
        sys.exit(f"no {SOURCE}; make it with: imgcls data get fashion-mnist --out {SOURCE}")
    rows = [row for k in args.labels for row in compare(k, args.epochs, args.unlabeled_subset, args.method)]
    print("\nFashion-MNIST, keras-cnn 28 px, seed 0; test = 10,000 test images; val = 200 training images")
    print(f"{'labels/class':>12s}  {'run':48s} {'test acc':>9s} {'train s':>8s} {'wall s':>7s}")
    for k, name, acc, seconds, wall in rows:
        print(f"{k:12d}  {name:48s} {acc:9.4f} {seconds:8.1f} {wall:7.1f}")


if __name__ == "__main__":
    main()
