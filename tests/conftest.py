"""Shared fixtures: small image folders made on the spot, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Keep the suite within two cores and quiet: no progress bars in captured output.
os.environ.setdefault("IMGCLS_PROGRESS", "0")
# Tests never touch the network: weights come from Hugging Face caches the tests build.
os.environ["HF_HUB_OFFLINE"] = "1"

CLASS_COLOURS = {"猫": (210, 60, 40), "狗 dog": (40, 70, 200), "bird": (60, 190, 70)}


def _image(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    noise = rng.integers(-50, 50, (size[1], size[0], 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def make_class_folders(root: Path, per_class: int, *, seed: int = 0, junk: bool = True) -> Path:
    """Three colour classes with Chinese names, in mixed formats, modes and sizes, plus junk
    files that must be ignored (hidden, non-image) or skipped (broken)."""
    rng = np.random.default_rng(seed)
    formats = [
        ("png", "RGB"),
        ("JPG", "RGB"),
        ("webp", "RGB"),
        ("bmp", "RGB"),
        ("png", "RGBA"),
        ("tif", "RGB"),
        ("gif", "P"),
    ]
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, mode = formats[i % len(formats)]
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            img = Image.fromarray(_image(rng, colour, size)).convert(mode)
            img.save(folder / f"{i:03d}.{ext}")
    if junk:
        first = root / next(iter(CLASS_COLOURS))
        (first / "notes.txt").write_text("not an image")
        (first / ".DS_Store").write_bytes(b"\0\1\2")
        (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        (first / "empty.jpg").write_bytes(b"")
        (root / ".ipynb_checkpoints").mkdir(exist_ok=True)
    return root


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Runs with train.threads=1 (for exact resumption) set torch's thread count for the process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", per_class=24)


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    make_class_folders(root / "train", per_class=24, seed=1)
    make_class_folders(root / "val", per_class=8, seed=2, junk=False)
    make_class_folders(root / "test", per_class=8, seed=3, junk=False)
    return root
