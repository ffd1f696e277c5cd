"""Inference speed of one model, several ways, in one run: which should `predict` and `serve` use?

For keras-cnn (28 px, 1 channel, 10 classes), resnet18 and mobilenetv3_small_100 (224 px,
3 channels, 1,000 classes), random weights, torch's default threads:
  - torch eager: NCHW float32 (PyTorch's default; the baseline every ratio is taken against);
  - torch channels_last float32, and channels_last under bfloat16 autocast (AMX / AVX512-BF16);
  - ONNX Runtime float32 (imgcls's export), and ONNX Runtime static int8 (QDQ, calibrated on
    64 random images: speed only; accuracy changes are measured on real data by `imgcls export`).
Batch 1: median and p99 latency in ms; batch 32: images/s (median of repeats). Settings are
interleaved within each repeat so load changes hit them alike. Also: the largest probability
difference of each way against eager float32, and int8's top-1 agreement with float32.

    .venv/bin/python benchmarks/inference_speed.py [--models keras-cnn,resnet18] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from imgcls.data.preprocess import Preprocessing
from imgcls.inference.export import quantize_int8, to_onnx_bytes
from imgcls.inference.onnx_runtime import probability_function, session
from imgcls.models import create_model

MODELS = {  # name: (img_size, channels, classes)
    "keras-cnn": (28, 1, 10),
    "resnet18": (224, 3, 1000),
    "mobilenetv3_small_100": (224, 3, 1000),
}


def torch_way(model, pre: Preprocessing, *, channels_last: bool, bf16: bool):
    from imgcls.inference.batched import batched_logits

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if bf16 else None

    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images)
        logits = batched_logits(
            model, x, pre, batch_size=len(images), channels_last=channels_last, autocast_dtype=dtype
        )
        return logits.softmax(1).numpy()

    return run


def timed(run, images: np.ndarray, seconds: float) -> list[float]:
    """Seconds per call, repeated for about `seconds` (at least 5 calls)."""
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t)
    return times


def bench_model(name: str, seconds: float, repeats: int) -> list[dict]:
    size, channels, classes = MODELS[name]
    pre = Preprocessing(size, channels, (0.5,) * channels, (0.25,) * channels)
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_chans=channels, img_size=size).eval()
    meta = {
        "model": {"name": name, "kwargs": {}},
        "classes": [str(i) for i in range(classes)],
        "preprocess": pre.to_dict(),
    }
    fp32 = to_onnx_bytes(model, pre, meta, pixels=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, size, size, channels), np.uint8)
    int8 = quantize_int8(fp32, pre, images)
    ways = {
        "torch eager NCHW fp32": torch_way(model, pre, channels_last=False, bf16=False),
        "torch channels_last fp32": torch_way(model, pre, channels_last=True, bf16=False),
        "torch channels_last bf16": torch_way(model, pre, channels_last=True, bf16=True),
        "onnxruntime fp32": probability_function(session(fp32), pre),
        "onnxruntime int8 (static)": probability_function(session(int8), pre),
    }
    reference = ways["torch eager NCHW fp32"](images[:32])
    ort_top1 = ways["onnxruntime fp32"](images[:64]).argmax(1)
    stats = {way: {"b1": [], "b32": []} for way in ways}
    for _ in range(repeats):
        for way, run in ways.items():  # interleaved
            run(images[:1])  # warm-up
            stats[way]["b1"] += timed(run, images[:1], seconds)
            stats[way]["b32"].append(statistics.median(timed(run, images[:32], seconds)))
    rows = []
    for way, run in ways.items():
        b1 = np.array(stats[way]["b1"]) * 1000
        probs = run(images[:32])
        rows.append(
            {
                "model": name,
                "way": way,
                "b1_median_ms": float(np.median(b1)),
                "b1_p99_ms": float(np.percentile(b1, 99)),
                "b32_img_s": 32 / statistics.median(stats[way]["b32"]),
                "max_diff": float(np.abs(probs - reference).max()),
                "top1_vs_ort": float((run(images[:64]).argmax(1) == ort_top1).mean()),
            }
        )
    base = rows[0]
    for row in rows:
        row["b1_speedup"] = base["b1_median_ms"] / row["b1_median_ms"]
        row["b32_speedup"] = row["b32_img_s"] / base["b32_img_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=1.0, help="time per setting per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, cpu {torch.backends.cpu.get_cpu_capability()}, load {load:.1f}")
    header = f"{'model':22s} {'way':27s} {'b1 med ms':>9s} {'b1 p99':>8s} {'x':>5s} {'b32 img/s':>9s} {'x':>5s}"
    print(header + f" {'max |dp|':>9s} {'top1=ort':>8s}")
    best = []
    for name in args.models.split(","):
        rows = bench_model(name, args.seconds, args.repeats)
        for r in rows:
            print(
                f"{r['model']:22s} {r['way']:27s} {r['b1_median_ms']:9.2f} {r['b1_p99_ms']:8.2f} "
                f"{r['b1_speedup']:5.2f} {r['b32_img_s']:9.0f} {r['b32_speedup']:5.2f} "
                f"{r['max_diff']:9.1e} {r['top1_vs_ort']:8.1%}"
            )
        winner = max(rows, key=lambda r: r["b32_speedup"])
        best.append(f"{name}: {winner['way']} {winner['b32_speedup']:.2f}x at batch 32")
    print(f"load after {os.getloadavg()[0]:.1f}")
    print("summary: fastest vs eager fp32 -- " + "; ".join(best))


if __name__ == "__main__":
    main()
