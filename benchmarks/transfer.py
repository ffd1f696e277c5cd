"""Transfer is real: pretraining on 8 Fashion-MNIST classes helps a hard 2-class task with 140 images.

--pair pullover-coat (default) or shirt-tshirt. Data (built once under benchmarks/.data/,
from Fashion-MNIST's arrays):
  - fm-8class-without-PAIR/train: every training image of the other 8 classes (48,000);
    `imgcls train` holds 10% of each class out for validation (--val-fraction 0.1).
  - pair-PAIR/train: 70 training images per class of the pair (140), drawn with numpy seed
    0; val/: 100 other training images per class (200), the only data used to pick the
    checkpoint; test/: the pair's 2,000 test images, used only by `imgcls evaluate`.

Runs (keras-cnn, --img-size 28, --seed 0, default recipe otherwise):
  1. pretrain: `imgcls train fm-8class-without-PAIR/train --val-fraction 0.1 --epochs 3`
  2. scratch: `imgcls train pair-PAIR/train --val pair-PAIR/val --epochs 30 --batch-size 32`
  3. fine-tune: 2 plus `--pretrained PRETRAIN/best.safetensors` (a new 2-class head)
  4. linear probe: 3 plus `--freeze-backbone`
each evaluated with `imgcls evaluate RUN/best.safetensors pair-PAIR/test --json`. Prints
test accuracy, best val accuracy and wall seconds of each train subprocess, and the
differences. Measured 7m40s wall on 2 cores shared with other jobs (load ~7; 3m40s CPU),
5 minutes of it the pretraining.

    .venv/bin/python benchmarks/transfer.py [--pair pullover-coat|shirt-tshirt]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RUNS = DATA / "runs"
PAIRS = {"pullover-coat": (2, 4), "shirt-tshirt": (6, 0)}  # two of the pairs classifiers confuse most
TRAIN_PER_CLASS, VAL_PER_CLASS = 70, 100
COMMON = ["--model", "keras-cnn", "--img-size", "28", "--seed", "0"]


def write_subset(out: Path, x: np.ndarray, y: np.ndarray, class_ids: tuple[int, ...]) -> None:
    """Class folders of the images whose label is in class_ids (labels renumbered 0..k-1)."""
    from imgcls.data.builtin import FASHION_MNIST_CLASSES, write_class_folders

    lookup = np.full(10, -1)
    lookup[list(class_ids)] = np.arange(len(class_ids))
    keep = np.flatnonzero(lookup[y] >= 0)
    write_class_folders(x[keep], lookup[y[keep]], [FASHION_MNIST_CLASSES[c] for c in class_ids], out)


def pair_folders(name: str = "pullover-coat") -> Path:
    """pair-NAME/{train,val,test}: 70 + 100 training images per class, all their test images."""
    from imgcls.data.builtin import load_fashion_mnist

    root, pair = DATA / f"pair-{name}", PAIRS[name]
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        x, y = load_fashion_mnist("train")
        rng = np.random.default_rng(0)
        picks = [rng.permutation(np.flatnonzero(y == c)) for c in pair]
        train = np.sort(np.concatenate([p[:TRAIN_PER_CLASS] for p in picks]))
        val = np.sort(np.concatenate([p[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS] for p in picks]))
        write_subset(root / "train", x[train], y[train], pair)
        write_subset(root / "val", x[val], y[val], pair)
        write_subset(root / "test", *load_fashion_mnist("test"), pair)
        (root / ".complete").touch()
    return root


def other_classes_folder(name: str) -> Path:
    """fm-8class-without-NAME: all 48,000 training images of the 8 classes not in the pair."""
    from imgcls.data.builtin import load_fashion_mnist

    root = DATA / f"fm-8class-without-{name}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_subset(root / "train", *load_fashion_mnist("train"), tuple(c for c in range(10) if c not in PAIRS[name]))
        (root / ".complete").touch()
    return root / "train"


def imgcls(*args: object) -> tuple[float, str]:
    """Run `imgcls ARGS` as a subprocess; (wall seconds, stdout). Stops the script on failure."""
    cmd = [sys.executable, "-m", "imgcls", *map(str, args)]
    print("$ imgcls " + " ".join(str(a).replace(str(HERE.parent) + "/", "") for a in args), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def train(name: str, data: Path, *args: object) -> tuple[Path, float]:
    """A fresh run under .data/runs/NAME; (run dir, wall seconds)."""
    out = RUNS / name
    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = imgcls("train", data, *args, "--out", out)
    return out, seconds


def test_accuracy(run: Path, folder: Path) -> float:
    _, stdout = imgcls("evaluate", run / "best.safetensors", folder, "--json")
    return json.loads(stdout)["accuracy"]


def val_accuracy(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=list(PAIRS), default="pullover-coat", help="the 2-class task")
    args = parser.parse_args()
    pair, other = pair_folders(args.pair), other_classes_folder(args.pair)
    few = [pair / "train", "--val", pair / "val", *COMMON, "--epochs", "30", "--batch-size", "32"]
    pre, pre_seconds = train(f"transfer-{args.pair}-pretrain", other, *COMMON, "--val-fraction", "0.1", "--epochs", "3")
    weights = pre / "best.safetensors"
    rows = {}
    for name, extra in [
        ("scratch", []),
        ("fine-tune (--pretrained)", ["--pretrained", weights]),
        ("linear probe (+ --freeze-backbone)", ["--pretrained", weights, "--freeze-backbone"]),
    ]:
        run, seconds = train(f"transfer-{args.pair}-{name.split()[0]}", few[0], *few[1:], *extra)
        rows[name] = (test_accuracy(run, pair / "test"), val_accuracy(run), seconds)

    print(
        f"\npretraining: keras-cnn on the other 8 classes, 43,200 train images, 3 epochs: "
        f"val accuracy {val_accuracy(pre):.4f}, {pre_seconds:.0f} s"
    )
    print(f"\n{args.pair}: 140 training images, 30 epochs, batch 32, keras-cnn 28 px, seed 0")
    print(f"{'run':36s} {'test acc':>9s} {'val acc':>8s} {'train s':>8s}")
    for name, (acc, val, seconds) in rows.items():
        print(f"{name:36s} {acc:9.4f} {val:8.4f} {seconds:8.1f}")
    scratch = rows["scratch"][0]
    fine, probe = rows["fine-tune (--pretrained)"][0], rows["linear probe (+ --freeze-backbone)"][0]
    print(
        f"\nfine-tune - scratch: {100 * (fine - scratch):+.1f} points; "
        f"linear probe - scratch: {100 * (probe - scratch):+.1f} points (2,000 test images)"
    )
    print(
        f"summary: transfer {args.pair} 140 img: scratch {scratch:.4f}, fine-tune {fine:.4f}, linear probe {probe:.4f}"
    )


if __name__ == "__main__":
    main()
