"""The compute ceiling: how fast this CPU can train a model at 28 px when data costs nothing.

A synthetic loop over random uint8 batches already in memory (default keras-cnn, batch 128,
28x28x1, 10 classes; `--model small-net --batch 256` for the fashion-mnist recipe's
network): normalise, forward, backward, AdamW step; in (i) NCHW float32 (PyTorch's
default), (ii) channels_last float32, (iii) channels_last + bfloat16 autocast. Then the
GFLOP/s of a 2048x2048 matmul in float32 and bfloat16. torch.get_num_threads() threads,
warm-up steps excluded, median of 3 repeats, the
settings interleaved within each repeat. Its (iii) row is the most any data pipeline
can reach with this network here; train_speed.py's train-loop images/s compare with it.
The FLOPs of one training image (forward and backward, counted by torch's FlopCounterMode)
turn each rate into achieved GFLOP/s, to set against the matmul peaks.

With --recipe NAME the same interleaved timing also runs imgcls's own training loop
(`supervised_epoch` of a run prepared from the recipe, on 2,560 random 28x28 grey PNGs decoded
into the cache): its augmentation, loss, optimizer, schedule and EMA on top of the bare step,
so the ratio loop / ceiling (goal: 90% or more) comes from one run on one machine state.

    .venv/bin/python benchmarks/compute_ceiling.py [--threads 1] [--model small-net --batch 256]
    .venv/bin/python benchmarks/compute_ceiling.py --model small-net --width 48 --sgd --recipe fashion-mnist
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from imgcls.models import create_model

SIZE, CLASSES = 28, 10
MATMUL_N = 2048


def make_train_step(
    channels_last: bool, dtype: torch.dtype | None, name: str = "keras-cnn", batch: int = 128, **kwargs
) -> Callable[[int], None]:
    """A closure doing one training step on batch i of random uint8 images already in memory."""
    torch.manual_seed(0)
    sgd = kwargs.pop("sgd", False)
    model = create_model(name, num_classes=CLASSES, in_chans=1, img_size=SIZE, **kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if sgd:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    pool = 16  # distinct batches cycled through
    images = torch.randint(0, 256, (pool, batch, SIZE, SIZE, 1), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (pool, batch))

    def step(i: int) -> None:
        x = (images[i % pool].float() * (1 / 255) - 0.5).div_(0.25).permute(0, 3, 1, 2)  # NHWC -> NCHW view
        x = x if channels_last else x.contiguous()  # the view already has channels_last strides
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), labels[i % pool])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_flops_per_image(name: str, **kwargs) -> float:
    """FLOPs of one image's forward and backward pass, as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name, num_classes=CLASSES, in_chans=1, img_size=SIZE, **kwargs)
    x = torch.randn(8, 1, SIZE, SIZE)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def make_matmul(dtype: torch.dtype) -> Callable[[int], None]:
    a = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
    b = torch.randn(MATMUL_N, MATMUL_N).to(dtype)
    return lambda i: a @ b


def make_imgcls_epoch(recipe: str, folder: Path) -> tuple[Callable[[int], None], int]:
    """imgcls's supervised_epoch on a run prepared from `recipe` over 2,560 random grey PNGs."""
    import numpy as np
    from PIL import Image

    from imgcls.config import build_config
    from imgcls.data.loader import cache_tensors
    from imgcls.models.registry import config_defaults
    from imgcls.training.epochs import epoch_seed
    from imgcls.training.loop import supervised_epoch
    from imgcls.training.run import prepare

    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(256):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.png")
    overrides = {"data": {"train": str(folder), "val_fraction": 0.01}, "train": {"epochs": 1000}}
    setup, opt = prepare(build_config(recipe, overrides, config_defaults), torch.device("cpu"))
    images, labels = cache_tensors(setup.train)
    whole = len(labels) - len(labels) % setup.config.train.batch_size  # full batches only, as the ceiling's
    images, labels = images[:whole], labels[:whole]

    def epoch(i: int) -> None:
        supervised_epoch(setup, (images, labels), opt, i, torch.Generator().manual_seed(epoch_seed(0, i)))

    return epoch, whole


def interleaved_rates(work: dict[str, tuple[Callable[[int], None], int]], warmup: int, repeats: int) -> dict:
    """Median calls/s of each callable; every repeat times all of them in turn, so a burst of
    load from other processes lands on all settings alike instead of on one row."""
    for step, _ in work.values():
        for i in range(warmup):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, (step, calls) in work.items():
            start = time.perf_counter()
            for i in range(calls):
                step(i)
            rates[name].append(calls / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--model", default="keras-cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, help="small-net's width (the fashion-mnist recipe: 48)")
    parser.add_argument("--sgd", action="store_true", help="SGD with Nesterov momentum instead of AdamW")
    parser.add_argument("--recipe", help="also time imgcls's training loop with this recipe (same model and batch)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}"
    )
    batch, model = args.batch, args.model
    kwargs = {"width": args.width} if args.width else {}
    flops_per_image = training_flops_per_image(model, **kwargs)
    optimizer = "SGD" if args.sgd else "AdamW"
    print(
        f"{model} {kwargs or ''}, {SIZE}x{SIZE}x1, batch {batch}, {optimizer}, "
        f"{flops_per_image / 1e6:.0f} MFLOP per training image; {args.steps} steps x {args.repeats} repeats, "
        f"{args.warmup} warm-up; interleaved, median\n"
    )
    train = {
        "NCHW fp32": (make_train_step(False, None, model, batch, sgd=args.sgd, **kwargs), args.steps),
        "channels_last fp32": (make_train_step(True, None, model, batch, sgd=args.sgd, **kwargs), args.steps),
        "channels_last + bf16 autocast": (
            make_train_step(True, torch.bfloat16, model, batch, sgd=args.sgd, **kwargs),
            args.steps,
        ),
    }
    images_per_call = dict.fromkeys(train, batch)
    with tempfile.TemporaryDirectory() as tmp:
        if args.recipe:
            epoch, images = make_imgcls_epoch(args.recipe, Path(tmp))
            train[f"imgcls loop ({args.recipe})"] = (epoch, 1)
            images_per_call[f"imgcls loop ({args.recipe})"] = images
        calls = interleaved_rates(train, args.warmup, args.repeats)
    rates = {k: v * images_per_call[k] for k, v in calls.items()}
    print(f"{'training step':32s} {'img/s':>8s} {'vs NCHW fp32':>13s} {'GFLOP/s':>8s}")
    for name, rate in rates.items():
        print(f"{name:32s} {rate:8.0f} {rate / rates['NCHW fp32']:12.2f}x {rate * flops_per_image / 1e9:8.0f}")
    if args.recipe:
        loop = rates[f"imgcls loop ({args.recipe})"]
        # the fastest bare setting is the ceiling: bf16 where the CPU has it, float32 where it is emulated
        best = max((name for name in rates if not name.startswith("imgcls")), key=rates.get)
        print(f"imgcls loop / ceiling ({best}): {loop / rates[best]:.1%}")

    matmuls = {"fp32": (make_matmul(torch.float32), 10), "bf16": (make_matmul(torch.bfloat16), 40)}
    flops = {k: v * 2 * MATMUL_N**3 / 1e9 for k, v in interleaved_rates(matmuls, 3, args.repeats).items()}
    print(f"\n{'matmul ' + str(MATMUL_N) + 'x' + str(MATMUL_N):32s} {'GFLOP/s':>8s}")
    for name, gflops in flops.items():
        print(f"{name:32s} {gflops:8.0f}")

    best = max((k for k in rates if not k.startswith("imgcls")), key=rates.get)
    print(
        f"\nsummary: compute_ceiling {model} b{batch}: "
        + ", ".join(f"{k} {v:.0f} img/s" for k, v in rates.items())
        + f" (best: {best}); matmul fp32 {flops['fp32']:.0f}, bf16 {flops['bf16']:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
