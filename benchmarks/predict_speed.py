"""Prediction throughput: imgcls's Predictor against a naive one-image-at-a-time loop.

Over the first N images (default all 10,000) of the Fashion-MNIST test folder that
train_speed.py writes, with one checkpoint (train_speed's run if present, else a 1-epoch
`imgcls train` on its 20,000-image folder):
  - Predictor: Predictor.from_checkpoint + predict_paths (threaded decoding, batches of 256),
    on PyTorch and again with runtime="onnx" (ONNX Runtime, conversion included);
  - naive: for each file, PIL open + transforms (Grayscale, ToTensor, Normalize with the
    checkpoint's mean/std) + the model on a batch of 1, under torch.no_grad;
  - the same naive loop with torch.set_num_threads(1): batch-1 forwards are too small to
    share between threads, and on a busy machine two threads mostly wait for each other;
  - `imgcls predict CKPT FOLDER --json` as a whole process (only when N covers the folder).
Repeats are interleaved; medians are printed with the ratio Predictor / naive, and the
share of images on which both give the same top-1 label (expected >= 99%).

    .venv/bin/python benchmarks/predict_speed.py [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms
from train_speed import DATA, fashion_folders

from imgcls import checkpoint as ckpt
from imgcls.inference.predictor import Predictor, expand_paths
from imgcls.models import create_model


def find_checkpoint(train: Path, val: Path) -> Path:
    """train_speed's best checkpoint if one exists, else a 1-epoch run made here."""
    runs = sorted((DATA / "runs").glob("train-speed-e*/best.safetensors"))
    if runs:
        return runs[-1]
    out = DATA / "runs" / "predict-speed-e1"
    if not (out / "best.safetensors").is_file():
        cmd = [
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
            "64",
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
        subprocess.run(["rm", "-rf", str(out)], check=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "best.safetensors"


def run_predictor(checkpoint: Path, items: list, runtime: str = "torch") -> tuple[float, list[str]]:
    start = time.perf_counter()
    predictor = Predictor.from_checkpoint(checkpoint, runtime=runtime)
    labels = [p.labels[0][0] for p in predictor.predict_paths(items, topk=1)]
    return time.perf_counter() - start, labels


def run_naive(checkpoint: Path, items: list) -> tuple[float, list[str]]:
    """What one writes first: load the weights, then one image, one transform, one forward at a time."""
    start = time.perf_counter()
    tensors, meta = ckpt.load_checkpoint(checkpoint)
    pre, classes = meta["preprocess"], meta["classes"]
    model = create_model(
        meta["model"]["name"], num_classes=len(classes), in_chans=pre["channels"], img_size=pre["img_size"]
    )
    model.load_state_dict(ckpt.read_model_tensors(tensors, model.state_dict()))
    model.eval()
    tf = transforms.Compose(
        [transforms.Grayscale(1), transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])]
    )
    labels = []
    with torch.no_grad():
        for _, path in items:
            x = tf(Image.open(path)).unsqueeze(0)
            labels.append(classes[model(x).argmax(1).item()])
    return time.perf_counter() - start, labels


def run_cli(checkpoint: Path, folder: Path) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "imgcls", "predict", str(checkpoint), str(folder), "--json", "--topk", "1"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="images to predict (first N of the test folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    train, val = fashion_folders()
    checkpoint = find_checkpoint(train, val)
    all_items = expand_paths([str(val)])
    items = all_items[: args.n]
    n = len(items)
    print(
        f"{n} images, checkpoint {checkpoint.relative_to(DATA.parent)}, torch {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats (median)"
    )
    threads = torch.get_num_threads()
    ways = ["Predictor", "Predictor, ONNX Runtime", "naive", "naive, 1 thread", "imgcls predict (CLI)"]
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        seconds, fast = run_predictor(checkpoint, items)
        times["Predictor"].append(seconds)
        seconds, by_onnx = run_predictor(checkpoint, items, runtime="onnx")
        times["Predictor, ONNX Runtime"].append(seconds)
        seconds, slow = run_naive(checkpoint, items)
        times["naive"].append(seconds)
        torch.set_num_threads(1)
        times["naive, 1 thread"].append(run_naive(checkpoint, items)[0])
        torch.set_num_threads(threads)
        if n == len(all_items):
            times["imgcls predict (CLI)"].append(run_cli(checkpoint, val))
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"\n{'way':24s} {'seconds':>8s} {'img/s':>8s}")
    for name, seconds in medians.items():
        print(f"{name:24s} {seconds:8.2f} {n / seconds:8.0f}")
    agree = sum(a == b for a, b in zip(fast, slow, strict=True)) / n
    onnx_agree = sum(a == b for a, b in zip(fast, by_onnx, strict=True)) / n
    ratio = medians["naive"] / medians["Predictor"]
    onnx_ratio = medians["naive"] / medians["Predictor, ONNX Runtime"]
    print(
        f"\nPredictor is {ratio:.1f}x the naive loop's speed ({onnx_ratio:.1f}x on ONNX Runtime); "
        f"top-1 agreement {agree:.2%} (ONNX Runtime vs PyTorch: {onnx_agree:.2%}; {n} images)"
    )
    cli = medians.get("imgcls predict (CLI)")
    print(
        f"summary: predict_speed N={n}: Predictor {n / medians['Predictor']:.0f} img/s, naive "
        f"{n / medians['naive']:.0f} img/s, {ratio:.1f}x; on ONNX Runtime {onnx_ratio:.1f}x"
        + (f"; CLI whole process {cli:.1f} s" if cli else "")
        + f"; top-1 agreement {agree:.2%}"
    )
    if min(agree, onnx_agree) < 0.99:
        sys.exit(f"predict_speed: top-1 agreement {agree:.2%} is below 99%")


if __name__ == "__main__":
    main()
