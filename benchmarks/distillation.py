"""Distillation is real: a small student learns more from a bigger teacher than from the labels alone.

Data (built once under benchmarks/.data/fm-10k/, from Fashion-MNIST's arrays, numpy seed 0):
train/ 1,000 training images per class (10,000); val/ 200 other training images per class
(2,000), the only data used to pick checkpoints; test/ the 10,000 test images, used only by
`imgcls evaluate`. Every run: --img-size 28 --seed 0, default recipe otherwise.

  teacher:   `imgcls train fm-10k/train --val fm-10k/val --model keras-cnn --epochs 10`
  alone:     `imgcls train fm-10k/train --val fm-10k/val --model STUDENT --epochs E`
  distilled: the same plus `--teacher TEACHER/best.safetensors --kd-alpha A --kd-temperature T`
Settings (student, E, A, T) are in SETTINGS below. Each run is evaluated with `imgcls evaluate
RUN/best.safetensors fm-10k/test --json`; prints test accuracy, best val accuracy, wall
seconds of each train subprocess, and distilled - alone. Measured 3m09s wall on 2 shared
cores (4m24s under heavier load, with the first setting only).

    .venv/bin/python benchmarks/distillation.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from transfer import DATA, test_accuracy, train, val_accuracy, write_subset

TRAIN_PER_CLASS, VAL_PER_CLASS = 1000, 200
TEACHER_EPOCHS = 10
# (student model, epochs, kd-alpha, kd-temperature). The first is the planned setting; it
# lost 0.5 points, so the second, chosen before seeing its result, puts more weight on the
# labels and softens less: at T=4 the T^2-scaled soft term dominates a 3-epoch run's loss.
SETTINGS = [("lenet", 3, 0.7, 4.0), ("lenet", 3, 0.5, 2.0)]
COMMON = ["--img-size", "28", "--seed", "0"]


def folders() -> Path:
    from imgcls.data.builtin import load_fashion_mnist

    root = DATA / "fm-10k"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        x, y = load_fashion_mnist("train")
        rng = np.random.default_rng(0)
        picks = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
        train_idx = np.sort(np.concatenate([p[:TRAIN_PER_CLASS] for p in picks]))
        val_idx = np.sort(np.concatenate([p[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS] for p in picks]))
        write_subset(root / "train", x[train_idx], y[train_idx], tuple(range(10)))
        write_subset(root / "val", x[val_idx], y[val_idx], tuple(range(10)))
        write_subset(root / "test", *load_fashion_mnist("test"), tuple(range(10)))
        (root / ".complete").touch()
    return root


def main() -> None:
    root = folders()
    data = [root / "train", "--val", root / "val", *COMMON]
    teacher, seconds = train("distill-teacher", *data, "--model", "keras-cnn", "--epochs", TEACHER_EPOCHS)
    rows = [(f"teacher keras-cnn, {TEACHER_EPOCHS} epochs", test_accuracy(teacher, root / "test"),
             val_accuracy(teacher), seconds)]  # fmt: skip
    gains, alone = [], {}
    for model, epochs, alpha, temperature in SETTINGS:
        student = [*data, "--model", model, "--epochs", epochs]
        tag = f"{model}-e{epochs}"
        if tag not in alone:  # settings with the same student share its run alone
            run, seconds = train(f"distill-{tag}-alone", *student)
            alone[tag] = test_accuracy(run, root / "test")
            rows.append((f"{model}, {epochs} epochs, alone", alone[tag], val_accuracy(run), seconds))
        kd = ["--teacher", teacher / "best.safetensors", "--kd-alpha", alpha, "--kd-temperature", temperature]
        run, seconds = train(f"distill-{tag}-a{alpha}-t{temperature:g}", *student, *kd)
        accuracy = test_accuracy(run, root / "test")
        rows.append((f"{model}, {epochs} epochs, KD a={alpha} T={temperature:g}", accuracy, val_accuracy(run), seconds))
        gains.append((f"{model} a={alpha} T={temperature:g}", accuracy - alone[tag]))

    print("\nFashion-MNIST, 10,000 training images, 28 px, seed 0; test = 10,000 test images")
    print(f"{'run':40s} {'test acc':>9s} {'val acc':>8s} {'train s':>8s}")
    for name, acc, val, seconds in rows:
        print(f"{name:40s} {acc:9.4f} {val:8.4f} {seconds:8.1f}")
    print()
    for name, gain in gains:
        print(f"distilled - alone ({name}): {100 * gain:+.2f} points")
    print(f"summary: distillation teacher {rows[0][1]:.4f}; " + "; ".join(f"{r[0]} {r[1]:.4f}" for r in rows[1:]))


if __name__ == "__main__":
    main()
