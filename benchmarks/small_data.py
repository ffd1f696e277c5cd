"""The small-data recipe against the default recipe on 140 images of a hard 2-class task.

Data: transfer.py's pair-pullover-coat folders under benchmarks/.data/ (built here if
missing): train/ 70 Fashion-MNIST training images per class of Pullover and Coat (numpy
seed 0), val/ 100 other training images per class (checkpoint selection only), test/ their
2,000 test images (used only by `imgcls evaluate`). Both recipes use keras-cnn,
--img-size 28 (the small-data recipe's own size is 64) and --seed 0:

  small-data: `imgcls train pair/train --val pair/val --recipe small-data --img-size 28`
              (its own 50 epochs, batch 32, early stopping after 15 epochs without progress)
  default:    `imgcls train pair/train --val pair/val --recipe default --img-size 28`
              (its own 10 epochs, batch 128: one step per epoch on 140 images)
  control:    default + `--epochs 50 --batch-size 32`, the small-data recipe's step count
              without its augmentation, label smoothing and optimizer settings
each evaluated with `imgcls evaluate RUN/best.safetensors pair/test --json`. Prints test
accuracy, best val accuracy, epochs run and wall seconds of each train subprocess, and
small-data - default. Measured 36 s wall on 2 shared cores.

    .venv/bin/python benchmarks/small_data.py
"""

from __future__ import annotations

import csv

from transfer import pair_folders, test_accuracy, train, val_accuracy

COMMON = ["--img-size", "28", "--seed", "0"]
RUNS = [
    ("small-data recipe (own epochs)", "small-data", []),
    ("default recipe (own epochs)", "default", []),
    ("default, 50 epochs, batch 32", "default", ["--epochs", "50", "--batch-size", "32"]),
]


def main() -> None:
    pair = pair_folders("pullover-coat")
    rows = []
    for name, recipe, extra in RUNS:
        out = f"small-data-{recipe}" + ("-e50" if extra else "")
        run, seconds = train(out, pair / "train", "--val", pair / "val", "--recipe", recipe, *COMMON, *extra)
        with open(run / "history.csv", encoding="utf-8") as f:
            epochs = len(list(csv.DictReader(f)))
        rows.append((name, test_accuracy(run, pair / "test"), val_accuracy(run), epochs, seconds))

    print("\nPullover vs Coat, 140 training images, keras-cnn 28 px, seed 0; test = 2,000 test images")
    print(f"{'run':32s} {'test acc':>9s} {'val acc':>8s} {'epochs':>7s} {'train s':>8s}")
    for name, acc, val, epochs, seconds in rows:
        print(f"{name:32s} {acc:9.4f} {val:8.4f} {epochs:7d} {seconds:8.1f}")
    small, default, control = (row[1] for row in rows)
    print(
        f"\nsmall-data - default: {100 * (small - default):+.1f} points; "
        f"small-data - default at 50 epochs: {100 * (small - control):+.1f} points"
    )
    print(
        f"summary: small_data pullover-coat 140 img: small-data {small:.4f}, default {default:.4f}, "
        f"default 50 epochs {control:.4f}"
    )


if __name__ == "__main__":
    main()
