"""Defaults that fit the data: `imgcls train DATA` with no model, recipe or weights (imgcls
chooses from the data, imgcls.training.plan) against the old fixed default (`--recipe default`:
keras-cnn at 32 px, 10 epochs) and the best explicit setting known for each set, on the same
split in the same run; then the optimizer defaults of AlexNet and VGG-11.

Sets (built once under benchmarks/.data/, all seeded):
  digits       scikit-learn's 1,797 8x8 digits, 70/30 split per class (test = the 30%)
  pair-140     Fashion-MNIST Pullover vs Coat, 70 training images a class (transfer.py's
               pair folders: val 100 a class, test 2,000)
  fm-6000      Fashion-MNIST, 600 training images a class; test = the first 2,000 test images
  mosaics      3,000 56-px 2x2 mosaics of Fashion-MNIST, multi-label (multilabel.py), test 1,000
  clipart      12 openclipart categories over white, 24/12/24 a class (finetune.py), from scratch
Accuracy (mAP for mosaics) from `imgcls evaluate RUN/best.safetensors TEST --json`; wall
seconds of each `imgcls train`.

Optimizer defaults: AlexNet (65 px) and VGG-11 (32 px) on digits for 6 epochs (~54 steps at
batch 128), with the model's new default (SGD 0.01, momentum 0.9, weight decay 5e-4, the
papers' setting) and the old one (AdamW 2e-3): first and last epoch training loss, test accuracy.

    .venv/bin/python benchmarks/defaults.py [--sets digits,pair-140,...] [--skip-optim]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil

import numpy as np
from finetune import clipart_folders
from multilabel import ARGS as MOSAIC_ARGS
from multilabel import build as build_mosaics
from transfer import DATA, imgcls, pair_folders, train, write_subset


def digits_folders() -> tuple:
    from sklearn.datasets import load_digits

    root = DATA / "digits-70-30"
    if not (root / ".complete").is_file():
        from imgcls.data.builtin import write_class_folders

        shutil.rmtree(root, ignore_errors=True)
        digits = load_digits()
        x, y = (digits.images * 16).clip(0, 255).astype(np.uint8), digits.target
        rng = np.random.default_rng(0)
        test = np.zeros(len(y), bool)
        for c in range(10):
            members = rng.permutation(np.flatnonzero(y == c))
            test[members[: round(0.3 * len(members))]] = True
        names = [str(c) for c in range(10)]
        write_class_folders(x[~test], y[~test], names, root / "train")
        write_class_folders(x[test], y[test], names, root / "test")
        (root / ".complete").touch()
    return root / "train", [], root / "test"


def fm_6000() -> tuple:
    from imgcls.data.builtin import load_fashion_mnist

    root = DATA / "fm-600-a-class"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        x, y = load_fashion_mnist("train")
        rng = np.random.default_rng(0)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:600] for c in range(10)]))
        write_subset(root / "train", x[keep], y[keep], tuple(range(10)))
        tx, ty = load_fashion_mnist("test")
        write_subset(root / "test", tx[:2000], ty[:2000], tuple(range(10)))
        (root / ".complete").touch()
    return root / "train", [], root / "test"


def pair_140() -> tuple:
    pair = pair_folders("pullover-coat")
    return pair / "train", ["--val", pair / "val"], pair / "test"


def mosaics() -> tuple:
    root = build_mosaics(3000, 1000)
    return root / "train.csv", [], root / "test.csv"


def clipart() -> tuple:
    root = clipart_folders(0)
    return root / "train", ["--val", root / "val"], root / "test"


# set -> (builder, best explicit setting known, where it comes from)
SETS = {
    "digits": (digits_folders, ["--model", "small-net", "--img-size", "16", "--epochs", "30"], "small-net 16 px"),
    "pair-140": (pair_140, ["--recipe", "small-data", "--img-size", "28"], "small-data recipe, 28 px"),
    "fm-6000": (fm_6000, ["--recipe", "fashion-mnist"], "fashion-mnist recipe"),
    "mosaics": (mosaics, [*MOSAIC_ARGS, "--epochs", "10"], "multilabel.py's small-net SGD"),
    "clipart": (clipart, ["--recipe", "small-data"], "small-data recipe, 64 px"),
}


def score(run, test) -> float:
    _, stdout = imgcls("evaluate", run / "best.safetensors", test, "--json")
    metrics = json.loads(stdout)
    return metrics["mAP"] if "mAP" in metrics else metrics["accuracy"]


def compare(name: str) -> list[tuple]:
    builder, best, why = SETS[name]
    data, extra, test = builder()
    rows = []
    for label, flags in (("auto (no flags)", []), ("old default", ["--recipe", "default"]), (f"best: {why}", best)):
        run, seconds = train(f"defaults-{name}-{label.split()[0].rstrip(':')}", data, *extra, *flags, "--seed", "0")
        rows.append((name, label, score(run, test), seconds))
    return rows


def optimizer_defaults() -> list[tuple]:
    data, _, test = digits_folders()
    rows = []
    old = ["--set", "optim.name=adamw", "--set", "optim.lr=0.002", "--set", "optim.weight_decay=0.01"]
    for model, size in (("alexnet", 65), ("vgg11", 32)):
        for label, flags in (("new default (SGD 0.01)", []), ("old default (AdamW 2e-3)", old)):
            common = ["--model", model, "--img-size", size, "--epochs", "6", "--seed", "0"]
            run, seconds = train(f"optim-{model}-{label.split()[0]}", data, *common, *flags)
            with open(run / "history.csv", encoding="utf-8") as f:
                history = list(csv.DictReader(f))
            losses = float(history[0]["train_loss"]), float(history[-1]["train_loss"])
            rows.append((model, label, *losses, score(run, test), seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--skip-optim", action="store_true")
    args = parser.parse_args()
    rows = [row for name in args.sets.split(",") for row in compare(name)]
    print(f"\n{'set':10s} {'run':38s} {'test':>7s} {'train s':>8s}")
    for name, label, value, seconds in rows:
        print(f"{name:10s} {label:38s} {value:7.4f} {seconds:8.1f}")
    if not args.skip_optim:
        print(f"\n{'model':8s} {'optimizer':28s} {'loss ep1':>9s} {'loss ep6':>9s} {'test':>7s} {'train s':>8s}")
        for model, label, first, last, value, seconds in optimizer_defaults():
            print(f"{model:8s} {label:28s} {first:9.4f} {last:9.4f} {value:7.4f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
