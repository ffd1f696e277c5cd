"""Whole-run training time: `imgcls train` against the usual PyTorch pipeline, same folders.

Data (built once, cached under benchmarks/.data/): 2,000 PNGs per class of Fashion-MNIST's
training set (20,000) as class folders, and its 10,000-image test set as the validation folder.

(a) imgcls: `imgcls train TRAIN --val VAL --model keras-cnn --img-size 28 --batch-size 64
    --epochs E --set augment.hflip=false --set augment.translate=0 --out RUN`, timed as a
    subprocess from start to end (decoding, training, checkpoints, metrics and report included).
(b) the usual way, written plainly below and also run as its own subprocess: torchvision
    ImageFolder + PIL + per-sample transforms (Grayscale, ToTensor, Normalize) +
    DataLoader(num_workers=2, shuffle) + the same Keras-style network + Adam (lr 1e-3),
    validating every epoch, NCHW float32.

Both train E epochs at batch 64. Prints each whole-run time, images/s (E x 20,000 training
images / whole-run seconds), final validation accuracy, and the ratio usual / imgcls.

    .venv/bin/python benchmarks/train_speed.py            # E=5
    .venv/bin/python benchmarks/train_speed.py --quick    # E=1
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

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
PER_CLASS = 2000
BATCH = 64
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's usual normalisation constants


def fashion_folders() -> tuple[Path, Path]:
    """(train, val) class folders under benchmarks/.data, written on first use."""
    import numpy as np

    from imgcls.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist, write_class_folders

    root = DATA / "fashion-mnist-20k"
    train, val = root / "train", root / "val"
    if (root / ".complete").is_file():
        return train, val
    shutil.rmtree(root, ignore_errors=True)
    x, y = load_fashion_mnist("train")
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)]))
    write_class_folders(x[keep], y[keep], FASHION_MNIST_CLASSES, train)
    x, y = load_fashion_mnist("test")
    write_class_folders(x, y, FASHION_MNIST_CLASSES, val)
    (root / ".complete").touch()
    return train, val


def imgcls_train_command(train: Path, val: Path, epochs: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imgcls",
        "train",
        str(train),
        "--val",
        str(val),
        "--model",
        "keras-cnn",
        "--img-size",
        "28",
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(epochs),
        "--set",
        "augment.hflip=false",
        "--set",
        "augment.translate=0",
        "--out",
        str(out),
    ]


def usual_pipeline(train_dir: str, val_dir: str, epochs: int) -> dict:
    """The usual way: ImageFolder + per-sample transforms + DataLoader workers, NCHW fp32."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from imgcls.models import create_model

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Grayscale(1), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train_set = datasets.ImageFolder(train_dir, transform=tf)
    val_set = datasets.ImageFolder(val_dir, transform=tf)
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=2)
    val_loader = DataLoader(val_set, batch_size=BATCH, shuffle=False, num_workers=2)
    model = create_model("keras-cnn", num_classes=10, in_chans=1, img_size=28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    train_seconds, accuracy = 0.0, 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        train_seconds += time.perf_counter() - start
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        accuracy = correct / len(val_set)
        print(f"usual: epoch {epoch}/{epochs} val acc {accuracy:.4f}", file=sys.stderr, flush=True)
    return {"val_acc": accuracy, "train_seconds": train_seconds, "train_images": len(train_set) * epochs}


def run_imgcls(train: Path, val: Path, epochs: int) -> dict:
    out = DATA / "runs" / f"train-speed-e{epochs}"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(imgcls_train_command(train, val, epochs, out), check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(out / "history.csv", encoding="utf-8") as f:
        history = list(csv.DictReader(f))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {
        "seconds": seconds,
        "val_acc": float(history[-1]["val_acc"]),
        "best_val_acc_fp32": metrics["accuracy"],
        "train_seconds": sum(float(row["seconds"]) for row in history),
        "run_dir": out,
        "load": (load, os.getloadavg()[0]),
    }


def run_usual(train: Path, val: Path, epochs: int) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--usual-only", str(train), str(val), "--epochs", str(epochs)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "load": (load, os.getloadavg()[0]), **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one epoch (E=1), for trying the script")
    parser.add_argument("--usual-only", nargs=2, metavar=("TRAIN", "VAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs
    if args.usual_only:  # the child process of run_usual: prints one JSON line
        print(json.dumps(usual_pipeline(*args.usual_only, epochs)))
        return

    import torch

    t0 = time.perf_counter()
    train, val = fashion_folders()
    rel = HERE.parent
    print(
        f"data: {train.relative_to(rel)} (20,000 PNGs), {val.relative_to(rel)} (10,000 PNGs); "
        f"ready in {time.perf_counter() - t0:.1f} s"
    )
    print(f"epochs {epochs}, batch {BATCH}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("imgcls:", " ".join(imgcls_train_command(Path("TRAIN"), Path("VAL"), epochs, Path("RUN"))[1:]))
    mine = run_imgcls(train, val, epochs)
    usual = run_usual(train, val, epochs)
    images = 20_000 * epochs
    print(
        f"\n{'pipeline':8s} {'whole run s':>11s} {'img/s whole':>11s} {'img/s train loop':>16s} {'val acc':>7s}"
        "  load avg before/after"
    )
    for name, r in (("usual", usual), ("imgcls", mine)):
        loop = images / r["train_seconds"]
        load = f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"
        print(f"{name:8s} {r['seconds']:11.1f} {images / r['seconds']:11.0f} {loop:16.0f} {r['val_acc']:7.4f}  {load}")
    fp32 = mine["best_val_acc_fp32"]
    print(f"(imgcls best checkpoint re-scored in float32: {fp32:.4f}; run dir {mine['run_dir'].relative_to(rel)})")
    ratio = usual["seconds"] / mine["seconds"]
    print(
        f"\nsummary: train_speed E={epochs}: usual {usual['seconds']:.1f} s, imgcls {mine['seconds']:.1f} s, "
        f"usual/imgcls {ratio:.2f}x; val acc usual {usual['val_acc']:.4f}, imgcls {mine['val_acc']:.4f}"
    )


if __name__ == "__main__":
    main()
