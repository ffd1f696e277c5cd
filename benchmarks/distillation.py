"""Distillation is real: a small student learns more from a bigger teacher than from the labels alone.

Data (built once under benchmarks/.data/fm-10k/, from Fashion-MNIST's arrays, numpy seed 0):
train/ 1,000 training images per class (10,000); val/ 200 other training images per class
(2,000), the only data used to pick checkpoints; test/ the 10,000 test images, used only by
`imgcls evaluate`.
  teacher:   `imgcls train fm-10k/train --val fm-10k/val --recipe fashion-mnist --seed 0`
             (small-net, 18 epochs)
  alone:     `imgcls train fm-10k/train --val fm-10k/val --img-size 28 --model lenet --epochs 10 --seed S`
  distilled: the same plus `--teacher TEACHER/best.safetensors --kd-alpha 0.5 --kd-temperature 2`
for S in 0, 1, 2. Each run is evaluated with `imgcls evaluate RUN/best.safetensors
fm-10k/test --json`; prints test accuracy, best val accuracy, wall seconds of each train
subprocess, and distilled - alone per seed and on average. About 4 minutes on 2 cores.

An earlier plan (keras-cnn teacher at 0.855, LeNet for 3 epochs, alpha 0.7 / T 4 and
alpha 0.5 / T 2) showed no gain: see RESULTS.md.

    .venv/bin/python benchmarks/distillation.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from transfer import DATA, test_accuracy, train, val_accuracy, write_subset

TRAIN_PER_CLASS, VAL_PER_CLASS = 1000, 200
STUDENT, STUDENT_EPOCHS, ALPHA, TEMPERATURE = "lenet", 10, 0.5, 2.0
SEEDS = (0, 1, 2)


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
    data = [root / "train", "--val", root / "val"]
    teacher, seconds = train("distill-teacher-small-net", *data, "--recipe", "fashion-mnist", "--seed", "0")
    rows = [
        (
            "teacher small-net (fashion-mnist recipe)",
            test_accuracy(teacher, root / "test"),
            val_accuracy(teacher),
            seconds,
        )
    ]
    kd = ["--teacher", teacher / "best.safetensors", "--kd-alpha", ALPHA, "--kd-temperature", TEMPERATURE]
    gains = []
    for seed in SEEDS:
        student = [*data, "--img-size", "28", "--model", STUDENT, "--epochs", STUDENT_EPOCHS, "--seed", seed]
        accuracy = {}
        for mode, extra in (("alone", []), ("distilled", kd)):
            run, seconds = train(f"distill-{STUDENT}-e{STUDENT_EPOCHS}-{mode}-s{seed}", *student, *extra)
            accuracy[mode] = test_accuracy(run, root / "test")
            rows.append(
                (f"{STUDENT} {STUDENT_EPOCHS} epochs, seed {seed}, {mode}", accuracy[mode], val_accuracy(run), seconds)
            )
        gains.append(accuracy["distilled"] - accuracy["alone"])
    print(f"\nFashion-MNIST, 10,000 training images, 28 px; KD alpha {ALPHA}, T {TEMPERATURE:g}; test = 10,000 images")
    print(f"{'run':44s} {'test acc':>9s} {'val acc':>8s} {'train s':>8s}")
    for name, acc, val, seconds in rows:
        print(f"{name:44s} {acc:9.4f} {val:8.4f} {seconds:8.1f}")
    per_seed = ", ".join(f"{100 * g:+.2f}" for g in gains)
    print(f"\ndistilled - alone: {per_seed} points (mean {100 * sum(gains) / len(gains):+.2f})")
    print(f"summary: distillation teacher {rows[0][1]:.4f}; distilled - alone {per_seed} points")


if __name__ == "__main__":
    main()
