"""Photo-size speed on a CPU: imgcls against timm's own pipelines on a folder of JPEG photos at 224 px.

Data (built once, cached under benchmarks/.data/photos-224/): photo-like JPEGs cut from
scikit-image's bundled sample photos, one class per source photo (10 classes: astronaut,
coffee, chelsea, rocket, hubble, immunohistochemistry, retina, motorcycle, camera, grass);
random 4:3 crops of 50-100% of the largest box that fits, resized to ~400x300, quality 85,
numpy seed 0: train/ (100 a class), val/ (20 a class) and predict/ (1,000, flat).

For each model (resnet18, mobilenetv3_large_100, tf_efficientnet_lite0), batch B, E epochs:
(1) compute ceiling: a synthetic training step on random uint8 224-px batches already in
    memory (normalise, forward, backward, AdamW), in NCHW fp32, channels_last fp32 and, only
    where the CPU has bf16, both layouts under bf16 autocast; settings interleaved within
    each repeat, warm-up excluded, median; the best is the ceiling. imgcls then trains in
    that setting (flags added only where it differs from imgcls's own choice).
(2) imgcls's loop: the images/s of `imgcls train`'s epochs at 224 px (history.csv), median of
    those after the first at that size, whose steps also build oneDNN's kernels; when
    progressive resizing leaves no such epoch, of epochs 2-3 of a 3-epoch run at 224 px
    throughout (`--set train.progressive_resize=0`); ratio to (1), goal >= 0.85.
(3) whole run: `imgcls train TRAIN --val VAL --model M --img-size 224` as a subprocess, wall
    time start to end, accuracy from `imgcls evaluate --json`; against timm's training
    pipeline wired as its train.py does (create_dataset, create_loader with its prefetcher
    and default augmentation: RandomResizedCrop 0.08-1, flip, colour jitter 0.4, random
    interpolation; create_optimizer_v2, create_scheduler_v2 per update, label smoothing 0.1,
    validation and best-checkpoint save every epoch), also a subprocess of this file, NCHW
    fp32 as train.py defaults. Both start from random weights (each tool's own init, --seed);
    both use AdamW lr 2e-3, wd 0.01, cosine with 0.5 warm-up epochs (imgcls's default
    recipe), so the runs differ in pipeline, not in optimisation. Goal: timm / imgcls >= 2.
(4) predict: `imgcls predict best.safetensors predict/ --json` wall time, twice: the first call
    converts the checkpoint to ONNX (a cold cache of its own, not the user's), the second loads
    the converted graph from imgcls's cache as every later call on that checkpoint does;
    against timm's inference path (inference.py: create_loader in eval mode, the model in eval
    mode, softmax top-5) with the same weights and preprocessing; goal >= 2, and top-1 agreement.

(5) test: 200 validation images tell two accuracies near 1.0 apart by one image, so both
    tools' best models are also scored, untimed, on the 1,000 predict/ images (held out from
    both runs; each file's name starts with its class): imgcls's checkpoint with `imgcls predict
    --runtime torch` (float32, as `imgcls evaluate` scores), timm's best.pth with its own eval
    transform, as its validation ran. The accuracy goal is then read on all 1,200 held-out images.

A table of every ratio beside its goal ends the output.

timm's loader workers: min(4, CPU count) -- train.py's default is 4, but on a 2-core machine
more workers than cores only take cores from the model they feed.

    .venv/bin/python benchmarks/photo_speed.py [--models resnet18,...] [--epochs 5] [--batch-size 64]
    .venv/bin/python benchmarks/photo_speed.py --models resnet18 --stages predict   # reuses the last run
    .venv/bin/python benchmarks/photo_speed.py --stages test   # scores the last run's two models again
    .venv/bin/python benchmarks/photo_speed.py --quick     # one small model, tiny folders: a smoke run

To run training as an older CPU would (PyTorch's and oneDNN's kernels limited to its
instruction set; the same cores, caches and clock), for example AVX2 alone or AVX-512 without
bfloat16:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/photo_speed.py --stages train,test
    ONEDNN_MAX_CPU_ISA=AVX512_CORE ATEN_CPU_CAPABILITY=avx512 \
        .venv/bin/python benchmarks/photo_speed.py --stages train,test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
SIZE = 224
MODELS = ("resnet18", "mobilenetv3_large_100", "tf_efficientnet_lite0")
# skimage.data names of photos bundled with scikit-image (no download), and their class names.
SOURCES = {
    "astronaut": "astronaut", "coffee": "coffee", "chelsea": "chelsea", "rocket": "rocket",
    "hubble_deep_field": "hubble", "immunohistochemistry": "ihc", "retina": "retina",
    "stereo_motorcycle": "motorcycle", "camera": "camera", "grass": "grass",
}  # fmt: skip
LR, WEIGHT_DECAY, WARMUP_EPOCHS = 2e-3, 0.01, 0.5  # imgcls's default recipe, used by both runs


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def build_photos(root: Path, train: int, val: int, predict: int) -> Path:
    """Class folders of random crops of skimage's sample photos, written once (seeded)."""
    if (root / ".complete").is_file():
        return root
    import numpy as np
    import skimage.data
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    per_class_predict = -(-predict // len(SOURCES))
    for name, label in SOURCES.items():
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: (left, right, disparity)
        photo = np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]
        height, width = photo.shape[:2]
        box_w = min(width, height * 4 // 3)  # the largest 4:3 box that fits
        for split, count in (("train", train), ("val", val), ("predict", per_class_predict)):
            folder = root / split if split == "predict" else root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w = int(box_w * rng.uniform(0.5, 1.0))
                h = w * 3 // 4
                top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
                out_w = int(rng.integers(360, 441))  # ~400x300, not all the same size, as photos are
                crop = Image.fromarray(photo[top : top + h, left : left + w]).resize((out_w, out_w * 3 // 4))
                crop.save(folder / f"{label}_{i:04d}.jpg", quality=85)
    (root / ".complete").touch()
    return root


# --- (1) the compute ceiling ----------------------------------------------------------------

SETTINGS = {  # name: (channels_last, autocast dtype)
    "NCHW fp32": (False, None),
    "channels_last fp32": (True, None),
    "NCHW bf16": (False, torch.bfloat16),
    "channels_last bf16": (True, torch.bfloat16),
}


def make_step(name: str, batch: int, channels_last: bool, dtype: torch.dtype | None, classes: int):
    """One training step on random 224-px uint8 batches in memory (compute_ceiling.py's loop)."""
    from torch import nn

    from imgcls.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_chans=3, img_size=SIZE)
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss()
    pool = 4  # distinct batches: at 224 px each is already 150 KB an image
    images = torch.randint(0, 256, (pool, batch, SIZE, SIZE, 3), dtype=torch.uint8)
    labels = torch.randint(0, classes, (pool, batch))

    def step(i: int) -> None:
        x = (images[i % pool].float() * (1 / 255) - 0.45).div_(0.25).permute(0, 3, 1, 2)  # channels_last view
        x = x if channels_last else x.contiguous()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), labels[i % pool])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ceiling(name: str, batch: int, steps: int, warmup: int, repeats: int, classes: int) -> dict[str, float]:
    """images/s of each setting this CPU can run (bf16 only where it has bf16)."""
    from compute_ceiling import interleaved_rates

    from imgcls.device import cpu_has_bf16

    names = [s for s, (_, dtype) in SETTINGS.items() if dtype is None or cpu_has_bf16()]
    work = {s: (make_step(name, batch, *SETTINGS[s], classes), steps) for s in names}
    return {s: rate * batch for s, rate in interleaved_rates(work, warmup, repeats).items()}


def imgcls_setting() -> str:
    """The setting imgcls's own loop trains in, from its defaults (train.channels_last, train.precision)."""
    from imgcls.config import TrainConfig
    from imgcls.device import choose_autocast

    tc = TrainConfig()
    dtype = choose_autocast(tc.precision, torch.device("cpu"))
    return f"{'channels_last' if tc.channels_last else 'NCHW'} {'bf16' if dtype is not None else 'fp32'}"


def setting_flags(best: str, default: str) -> list[str]:
    """imgcls train flags for the best ceiling setting; none when it is imgcls's own choice."""
    if best == default:
        return []
    layout, precision = best.split()
    return ["--set", f"train.channels_last={str(layout == 'channels_last').lower()}", "--precision", precision]


# --- (2, 3) training: imgcls and timm's pipeline ------------------------------------------


def timed(command: list[str], log: Path) -> float:
    """Wall seconds of a subprocess, its output kept in `log` (shown when it fails)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return seconds


def imgcls(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgcls", *args]


def epoch_seconds(run: Path) -> list[float]:
    """Seconds of each training epoch from history.csv (train.log rounds img/s to whole
    numbers: 3-10% at the 10-30 img/s of 224 px on a CPU)."""
    import csv

    with open(run / "history.csv") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def imgcls_accuracy(checkpoint: Path, folder: Path) -> float:
    out = subprocess.run(imgcls("evaluate", str(checkpoint), str(folder), "--json"), capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"imgcls evaluate failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout)["accuracy"])


def peer_train(args: argparse.Namespace) -> None:
    """timm's training pipeline, wired as its train.py wires it; prints its validation accuracy as JSON."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    cpu = torch.device("cpu")
    torch.manual_seed(args.seed)
    train_set = create_dataset("", root=args.train, split="train", is_training=True, batch_size=args.batch_size)
    val_set = create_dataset("", root=args.val, split="validation")
    model = timm.create_model(args.model, num_classes=len(train_set.reader.class_to_idx))
    config = resolve_data_config({}, model=model)  # input size, mean/std, crop_pct, interpolation
    common = dict(input_size=config["input_size"], batch_size=args.batch_size, use_prefetcher=True, device=cpu)
    common.update(mean=config["mean"], std=config["std"], num_workers=args.workers)
    # train.py's default augmentation: scale (0.08, 1), hflip 0.5, colour jitter 0.4, 'random' interpolation
    train_loader = create_loader(train_set, is_training=True, interpolation="random", **common)
    val_loader = create_loader(
        val_set, is_training=False, interpolation=config["interpolation"], crop_pct=config["crop_pct"], **common
    )
    optimizer = create_optimizer_v2(model, opt="adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    updates = len(train_loader)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=args.epochs, warmup_epochs=WARMUP_EPOCHS, warmup_lr=LR / 100,
        step_on_epochs=False, updates_per_epoch=updates,
    )  # fmt: skip
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)  # train.py's --smoothing default
    best, step = 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
        scheduler.step(epoch + 1)
        seconds = time.perf_counter() - start
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                seen += len(y)
        print(f"epoch {epoch + 1}: {updates * args.batch_size / seconds:.1f} img/s, val acc {correct / seen:.4f}")
        if correct / seen > best:  # train.py's CheckpointSaver keeps the best
            best = correct / seen
            torch.save(model.state_dict(), Path(args.out) / "best.pth")
    print(json.dumps({"accuracy": best}))


def peer_test(args: argparse.Namespace) -> None:
    """timm's best.pth on a flat folder, through its eval transform (as its validation ran):
    the top-1 class of each file as JSON."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config

    classes = sorted(p.name for p in Path(args.train).iterdir() if p.is_dir())  # create_dataset's order
    model = timm.create_model(args.model, num_classes=len(classes))
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    config = resolve_data_config({}, model=model)
    dataset = create_dataset("", root=args.folder)
    loader = create_loader(
        dataset, input_size=config["input_size"], batch_size=args.batch_size, use_prefetcher=True,
        interpolation=config["interpolation"], mean=config["mean"], std=config["std"],
        crop_pct=config["crop_pct"], num_workers=args.workers, device=torch.device("cpu"),
    )  # fmt: skip
    with torch.no_grad():
        top1 = torch.cat([model(x).argmax(1) for x, _ in loader]).tolist()
    names = dataset.filenames(basename=True)
    print(json.dumps({name: classes[i] for name, i in zip(names, top1, strict=True)}))


def file_accuracy(top1: dict[str, str]) -> float:
    """Accuracy of {file name: predicted class} where each name starts with its class."""
    return sum(name.split("_")[0] == label for name, label in top1.items()) / max(len(top1), 1)


def test_stage(model: str, folder: Path, run: Path, args: argparse.Namespace) -> dict:
    """Both tools' best models on the held-out predict/ images (1,000), untimed."""
    checkpoint, peer_weights = run / "imgcls" / "best.safetensors", run / "best.pth"
    if not checkpoint.is_file() or not peer_weights.is_file():
        sys.exit(f"no {checkpoint} or {peer_weights}: run the train stage first")
    _, out = timed_capture(imgcls("predict", str(checkpoint), str(folder / "predict"), "--json", "--runtime", "torch"))
    ours = file_accuracy(imgcls_top1(out))
    peer = [
        sys.executable, __file__, "--peer-test", "--model", model, "--checkpoint", str(peer_weights),
        "--train", str(folder / "train"), "--folder", str(folder / "predict"), "--workers", str(args.workers),
    ]  # fmt: skip
    _, out = timed_capture(peer)
    theirs = file_accuracy(json.loads(out.strip().splitlines()[-1]))
    val, test = len(list((folder / "val").rglob("*.jpg"))), len(list((folder / "predict").glob("*.jpg")))
    print(f"  test {test} JPEGs   imgcls acc {ours:.4f}, timm acc {theirs:.4f} (untimed: both best models)")
    return {"test_acc": ours, "timm_test_acc": theirs, "val_n": val, "test_n": test}


# --- (4) prediction -------------------------------------------------------------------------


def peer_predict(args: argparse.Namespace) -> None:
    """timm's inference path (inference.py) on imgcls's checkpoint: top-1 label per file as JSON."""
    import timm
    from timm.data import create_dataset, create_loader

    from imgcls.checkpoint import load_model

    network, pre, meta = load_model(args.checkpoint)
    model = timm.create_model(args.model, num_classes=len(meta["classes"]))
    model.load_state_dict(network.state_dict())  # imgcls builds timm's network: the same names
    model.eval()
    dataset = create_dataset("", root=args.folder)
    loader = create_loader(
        dataset, input_size=(3, pre.img_size, pre.img_size), batch_size=256, use_prefetcher=True,
        interpolation=pre.interpolation, mean=pre.mean, std=pre.std, crop_pct=pre.crop_pct,
        num_workers=args.workers, device=torch.device("cpu"),
    )  # fmt: skip
    top = []
    with torch.no_grad():
        for x, _ in loader:
            top.append(model(x).softmax(-1).topk(5)[1])
    top1 = torch.cat(top)[:, 0].tolist()
    names = dataset.filenames(basename=True)
    print(json.dumps({name: meta["classes"][i] for name, i in zip(names, top1, strict=True)}))


def imgcls_top1(stdout: str) -> dict[str, str]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {Path(r["path"]).name: r["predictions"][0]["label"] for r in rows if "predictions" in r}


def timed_capture(command: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


# --- the benchmark --------------------------------------------------------------------------


def ceiling_stage(model: str, args: argparse.Namespace, default: str) -> dict:
    rates = ceiling(model, args.batch_size, args.steps, args.warmup, args.repeats, len(SOURCES))
    best = max(rates, key=rates.get)
    for name, rate in rates.items():
        mark = " <- ceiling" if name == best else ""
        print(f"  ceiling {name:20s} {rate:8.1f} img/s  {rate / rates['NCHW fp32']:5.2f}x NCHW fp32{mark}")
    flags = setting_flags(best, default)
    print(f"  imgcls trains in: {best}" + (f" (flags: {' '.join(flags)})" if flags else " (its own default)"))
    return {"ceiling": rates[best], "best": best, "flags": flags}


def train_stage(model: str, folder: Path, run: Path, args: argparse.Namespace, flags: list[str]) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)

    def train_cmd(epochs: int, out: str, *extra: str) -> list[str]:
        return imgcls(
            "train", str(folder / "train"), "--val", str(folder / "val"), "--model", model,
            "--img-size", str(SIZE), "--epochs", str(epochs), "--batch-size", str(args.batch_size),
            "--out", str(run / out), "--seed", str(args.seed), *flags, *extra,
        )  # fmt: skip

    from imgcls.training.optim import epoch_side
    from imgcls.training.run import AUTO_PROGRESSIVE_START

    wall = timed(train_cmd(args.epochs, "imgcls"), run / "imgcls.out")
    seconds = epoch_seconds(run / "imgcls")
    images = len(list((folder / "train").rglob("*.jpg")))
    images -= images % args.batch_size if images > args.batch_size else 0  # imgcls drops a short last batch
    per_epoch = [images / s for s in seconds]
    # imgcls's loop against the ceiling at 224 px: the epochs at the full size (progressive
    # resizing trains the earlier ones smaller) after the first at that size, which also builds
    # oneDNN's kernels for it (the ceiling leaves its warm-up out). When progressive resizing
    # left only one such epoch, a 3-epoch run at 224 px throughout measures the loop.
    sides = [epoch_side(SIZE, AUTO_PROGRESSIVE_START, epoch, len(seconds)) for epoch in range(1, len(seconds) + 1)]
    at_full = [rate for rate, side in zip(per_epoch, sides, strict=True) if side == SIZE]
    if at_full[1:]:
        loop, loop_from = statistics.median(at_full[1:]), f"this run's epochs at {SIZE} px after the first"
    elif args.epochs < 3 or "ceiling" not in args.stages:  # no ceiling: no loop run to compare
        loop, loop_from = (at_full or per_epoch)[-1], f"this run's last epoch ({SIZE} px), warm-up included"
    else:
        timed(train_cmd(3, "imgcls-loop", "--set", "train.progressive_resize=0"), run / "imgcls-loop.out")
        loop = statistics.median(images / s for s in epoch_seconds(run / "imgcls-loop")[1:])
        loop_from = "epochs 2-3 of a run at 224 px throughout"
    accuracy = imgcls_accuracy(run / "imgcls" / "best.safetensors", folder / "val")
    rates = ", ".join(f"{rate:.1f} at {side}" for rate, side in zip(per_epoch, sides, strict=True))
    print(f"  imgcls loop       {loop:8.1f} img/s at {SIZE} px ({loop_from}; the whole run's epochs: {rates} px)")

    peer_cmd = [
        sys.executable, __file__, "--peer-train", "--model", model, "--train", str(folder / "train"),
        "--val", str(folder / "val"), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--out", str(run), "--seed", str(args.seed),
    ]  # fmt: skip
    peer_wall = timed(peer_cmd, run / "timm.out")
    peer_acc = json.loads((run / "timm.out").read_text().strip().splitlines()[-1])["accuracy"]
    other = wall - sum(seconds)
    peer_loop = statistics.median(float(r) for r in re.findall(r"([\d.]+) img/s", (run / "timm.out").read_text()))
    print(f"  whole run  imgcls {wall:7.1f} s, val acc {accuracy:.4f} ({other:.1f} s outside the training epochs)")
    print(f"             timm   {peer_wall:7.1f} s, val acc {peer_acc:.4f} (its epochs: {peer_loop:.1f} img/s, median)")
    print(f"  timm / imgcls     {peer_wall / wall:8.2f}x   (goal >= 2x at equal or better accuracy)")
    return {"loop": loop, "epochs": len(per_epoch), "train_s": wall, "acc": accuracy, "timm_train_s": peer_wall,
            "timm_acc": peer_acc}  # fmt: skip


def predict_stage(model: str, folder: Path, run: Path, args: argparse.Namespace) -> dict:
    """imgcls predict twice (the first converts the checkpoint to ONNX, the second loads the
    converted graph from imgcls's cache, as every later call does), timm's inference path once."""
    checkpoint = run / "imgcls" / "best.safetensors"
    if not checkpoint.is_file():
        sys.exit(f"no {checkpoint}: run the train stage first")
    cache = DATA / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "IMGCLS_CACHE_DIR": str(cache)}  # a cold cache, not the user's
    command = imgcls("predict", str(checkpoint), str(folder / "predict"), "--json")
    cold, out = timed_capture(command, env)
    ours = imgcls_top1(out)
    peer = [sys.executable, __file__, "--peer-predict", "--model", model, "--checkpoint", str(checkpoint)]
    peer_wall, out = timed_capture([*peer, "--folder", str(folder / "predict"), "--workers", str(args.workers)])
    theirs = json.loads(out.strip().splitlines()[-1])
    warm, out = timed_capture(command, env)
    agree = sum(ours.get(name) == label for name, label in theirs.items()) / max(len(theirs), 1)
    # predict's --runtime auto from 512 images: ONNX Runtime float32, or where the CPU computes
    # bfloat16, the faster of it and PyTorch bfloat16, timed once per checkpoint
    onnx = len(ours) >= 512
    first, second = ("converting", "from the cache") if onnx else ("first run", "second run")
    print(f"  predict {len(ours)} JPEGs ({'--runtime auto' if onnx else 'PyTorch'}): imgcls {cold:.1f} s {first},"
          f" {warm:.1f} s {second}; timm {peer_wall:.1f} s")  # fmt: skip
    print(f"  timm / imgcls     {peer_wall / warm:8.2f}x {second}, {peer_wall / cold:.2f}x {first}   (goal >= 2x);"
          f" top-1 agreement {agree:.1%}")  # fmt: skip
    return {"predict_s": warm, "predict_cold_s": cold, "timm_predict_s": peer_wall, "agree": agree}


def bench_model(model: str, folder: Path, args: argparse.Namespace, default: str) -> dict:
    print(f"\n== {model}, {SIZE} px, batch {args.batch_size}, {args.epochs} epoch(s)")
    result: dict = {"model": model}
    run = DATA / "runs" / (f"photo-{model}" + (f"-seed{args.seed}" if args.seed else ""))
    if "ceiling" in args.stages:
        result |= ceiling_stage(model, args, default)
    if "train" in args.stages:
        result |= train_stage(model, folder, run, args, result.get("flags", []))
        if "ceiling" in result:
            warm = "" if result["epochs"] > 1 else "; one epoch: it includes the warm-up the ceiling excludes"
            print(f"  loop / ceiling    {result['loop'] / result['ceiling']:8.1%}   (goal >= 85%{warm})")
    if "predict" in args.stages:
        result |= predict_stage(model, folder, run, args)
    if "test" in args.stages:
        result |= test_stage(model, folder, run, args)
    return result


def summary(results: list[dict]) -> None:
    """One row per model: each ratio beside its goal ('-' where its stage did not run)."""

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    goals = "loop/ceiling >= 85% | train timm/imgcls >= 2x, accuracy >= timm's* | predict timm/imgcls >= 2x"
    print(f"\n{'model':24s} | {goals}")
    for r in results:
        loop = train = predict = "-"
        if "loop" in r and "ceiling" in r:
            ratio = r["loop"] / r["ceiling"]
            loop = f"{ratio:.0%} {verdict(ratio >= 0.85)} ({r['best']})"
        if "train_s" in r:
            ratio, ours, theirs = r["timm_train_s"] / r["train_s"], r["acc"], r["timm_acc"]
            if "test_acc" in r:  # on every held-out image: validation and test
                val, test = r["val_n"], r["test_n"]
                ours = (ours * val + r["test_acc"] * test) / (val + test)
                theirs = (theirs * val + r["timm_test_acc"] * test) / (val + test)
            train = f"{ratio:.2f}x, acc {ours:.3f} vs {theirs:.3f} {verdict(ratio >= 2 and ours >= theirs)}"
        if "predict_s" in r:
            ratio, cold = r["timm_predict_s"] / r["predict_s"], r["timm_predict_s"] / r["predict_cold_s"]
            predict = f"{ratio:.2f}x {verdict(ratio >= 2)} (first call: {cold:.2f}x), agree {r['agree']:.0%}"
        print(f"{r['model']:24s} | {loop:19s} | {train:44s} | {predict}")
    print("* accuracy on the validation images, and on the test images too where the test stage ran")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="both tools' seed (runs of other seeds are kept apart)")
    parser.add_argument("--batch-size", type=int, default=64)
    # The ceiling's steps take 1-4 s each at 224 px on two cores: 3 steps x 3 repeats per setting
    # gave medians within a few percent, at a minute or two per model.
    parser.add_argument("--steps", type=int, default=3, help="ceiling: timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stages",
        default="ceiling,train,predict,test",
        help="which to run (predict alone reuses the last train stage's checkpoint)",
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="timm's loader workers")
    parser.add_argument("--quick", action="store_true", help="smoke run: one small model, tiny folders, 1 epoch")
    # The timm peers run as subprocesses of this same file:
    for hidden in ("--peer-train", "--peer-predict", "--peer-test"):
        parser.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model", "--train", "--val", "--out", "--checkpoint", "--folder"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_train:
        return peer_train(args)
    if args.peer_predict:
        return peer_predict(args)
    if args.peer_test:
        return peer_test(args)

    if args.quick:
        folder = build_photos(DATA / "photos-224-quick", train=4, val=2, predict=40)
        args.epochs, args.batch_size, args.steps, args.warmup, args.repeats = 1, 8, 2, 1, 1
        models = args.models.split(",") if args.models != ",".join(MODELS) else ["mobilenetv3_large_100"]
    else:
        folder = build_photos(DATA / "photos-224", train=100, val=20, predict=1000)
        models = args.models.split(",")
    default = imgcls_setting()
    from imgcls.device import cpu_has_bf16

    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bf16 on this CPU: {cpu_has_bf16()}; imgcls's own loop trains in: {default}; timm workers {args.workers}")
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("ATEN_CPU_CAPABILITY")
    if any(limit):
        print(f"run as an older CPU: oneDNN limited to {limit[0]}, PyTorch's kernels to {limit[1]} "
              "(ONNX Runtime is not limited: its predict figures are this CPU's)")  # fmt: skip
    print(f"data: {folder.relative_to(HERE)} ({len(SOURCES)} classes; ~400x300 JPEG, quality 85)")
    args.stages = set(args.stages.split(","))
    results = [bench_model(model, folder, args, default) for model in models]

    summary(results)


if __name__ == "__main__":
    main()
