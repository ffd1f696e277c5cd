"""Multi-label on real images: 2x2 mosaics of Fashion-MNIST garments.

Each 56x56 grey mosaic has four cells; 1 to 4 of them (uniformly) hold a garment drawn at
random, the others stay black; its labels are the garment classes present (1-4 labels, fewer
when a class repeats). Train mosaics are built from Fashion-MNIST's training images, test
mosaics from its test images (numpy seed 0), written as PNGs with CSV manifests under
benchmarks/.data/fm-mosaics/. Then:

    imgcls train fm-mosaics/train.csv --val fm-mosaics/test.csv --model small-net --img-size 56 \
        --epochs 10 --batch-size 128 --set optim.name=sgd --set optim.lr=0.1 ... (see ARGS)
    imgcls evaluate RUN/best.safetensors fm-mosaics/test.csv --json

The test manifest doubles as validation (it picks the best epoch and the per-class
thresholds), so the F1 numbers are slightly optimistic; mAP does not depend on thresholds.
Prints mAP, micro-F1, macro-F1, subset accuracy, Hamming loss and wall seconds.

    .venv/bin/python benchmarks/multilabel.py [--train 12000 --test 3000 --epochs 10 --loss bce|asl]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from transfer import DATA, imgcls, train

from imgcls.data.builtin import FASHION_MNIST_CLASSES, class_folder_name, load_fashion_mnist

ARGS = (
    "--model",
    "small-net",
    "--img-size",
    "56",
    "--batch-size",
    "128",
    "--set",
    "optim.name=sgd",
    "--set",
    "optim.lr=0.1",
    "--set",
    "optim.weight_decay=0.0005",
    "--set",
    "optim.warmup_epochs=1",
    "--set",
    "model.kwargs.width=48",
    "--set",
    "augment.translate=0.0625",
)


def mosaics(split: str, count: int, out: Path, rng: np.random.Generator) -> Path:
    x, y = load_fashion_mnist(split)
    rows = []
    (out / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.zeros((56, 56), np.uint8)
        cells = rng.permutation(4)[: rng.integers(1, 5)]
        labels = set()
        for cell in cells:
            k = int(rng.integers(len(x)))
            r, c = 28 * (cell // 2), 28 * (cell % 2)
            image[r : r + 28, c : c + 28] = x[k]
            labels.add(class_folder_name(FASHION_MNIST_CLASSES[y[k]]))  # imgcls refuses '/' in a class name
        name = f"{split}/{i:05d}.png"
        Image.fromarray(image).save(out / name)
        rows.append((name, ";".join(sorted(labels))))
    manifest = out / f"{split}.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return manifest


def build(train_count: int, test_count: int) -> Path:
    root = DATA / f"fm-mosaics-{train_count}-{test_count}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        rng = np.random.default_rng(0)
        mosaics("train", train_count, root, rng)
        mosaics("test", test_count, root, rng)
        (root / ".complete").touch()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--loss", choices=["bce", "asl"], default="bce")
    args = parser.parse_args()
    root = build(args.train, args.test)
    run, seconds = train(
        f"multilabel-{args.loss}-{args.epochs}",
        root / "train.csv",
        "--val",
        root / "test.csv",
        *ARGS,
        "--epochs",
        args.epochs,
        "--set",
        f"train.multilabel_loss={args.loss}",
    )
    _, stdout = imgcls("evaluate", run / "best.safetensors", root / "test.csv", "--json")
    m = json.loads(stdout)
    print(f"fm-mosaics {args.train} train / {args.test} test, small-net 56 px, {args.epochs} epochs, loss {args.loss}")
    print(
        f"  mAP {m['mAP']:.4f}  micro-F1 {m['micro_f1']:.4f}  macro-F1 {m['macro_f1']:.4f}  subset accuracy "
        f"{m['subset_accuracy']:.4f}  Hamming loss {m['hamming_loss']:.4f}  train {seconds:.0f} s"
    )
    for name, c in sorted(m["per_class"].items(), key=lambda kv: kv[1]["average_precision"]):
        print(f"  {name:12s} AP {c['average_precision']:.4f}  F1 {c['f1']:.4f}  threshold {c['threshold']:.2f}")


if __name__ == "__main__":
    main()
