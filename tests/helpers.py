"""What several test modules share: image folders and images made on the spot (never
downloaded), a tiny trained model, torchrun and the headless browser's whereabouts.

Test modules import from here (and fixtures come from conftest.py), never from each other."""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def png(colour=(210, 60, 40), size=(40, 30), mode="RGB") -> bytes:
    """The bytes of a plain-colour PNG, as an upload would carry them."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- multi-label data

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_png(path: Path, colour=(128, 128, 128)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A manifest: a header, then one (path, labels) row per image."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return path


def mosaic(colours: list[tuple[int, int, int] | None], rng) -> np.ndarray:
    """A 16x16 image of four 8x8 quadrants, each a colour or dark noise."""
    image = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
    for q, colour in enumerate(colours):
        if colour is not None:
            y, x = 8 * (q // 2), 8 * (q % 2)
            image[y : y + 8, x : x + 8] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    return image


# ---------------------------------------------------------------- a tiny trained model

KNOWN = ("猫", "狗 dog")  # trained on; "bird" is kept aside to enrol without retraining


@functools.cache
def tiny_model() -> dict[str, Path]:
    """keras-cnn at 32 px, 2 epochs, on two of the colour classes (12 images each); trained
    once per test process and shared by the retrieval tests."""
    from imgcls.cli.main import main

    root = Path(tempfile.mkdtemp(prefix="imgcls-retrieval-"))
    everything = make_class_folders(root / "all", per_class=12, junk=False)
    known = root / "known"
    known.mkdir()
    for name in KNOWN:
        (everything / name).rename(known / name)
    run = root / "run"
    args = ["-q", "train", str(known), "--out", str(run), "--img-size", "32", "--batch-size", "8", "--epochs", "2"]
    assert main(args) == 0
    return {"root": root, "known": known, "birds": everything / "bird", "checkpoint": run / "best.safetensors"}


# ---------------------------------------------------------------- other processes


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`imgcls ARGS` on two CPU processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "imgcls",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser() -> None:
    """At a browser test module's top: skip it without Chromium and its driver (Debian's
    chromium and chromium-driver), except in CI, which sets IMGCLS_REQUIRE_BROWSER=1."""
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.environ.get("IMGCLS_REQUIRE_BROWSER") == "1":
        raise RuntimeError("IMGCLS_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)


# --- photo-like images in the sizes and modes clients meet (large JPEGs, EXIF-rotated, transparent,
# palette, grey, CMYK, strips, 1-pixel-high) ---------------------------------------------------

# (file name suffix, Pillow mode, width, height); an "exif" suffix means stored sideways.
VARIANTS = [
    ("jpg", "RGB", 640, 480),
    ("jpg", "RGB", 1200, 900),
    ("png", "RGB", 300, 200),
    ("webp", "RGB", 45, 70),
    ("png", "RGBA", 200, 150),
    ("gif", "P", 120, 90),
    ("png", "L", 150, 150),
    ("jpg", "CMYK", 400, 300),
    ("exif.jpg", "RGB", 480, 640),
    ("png", "RGB", 33, 1000),
    ("png", "RGB", 300, 1),
    ("bmp", "RGB", 31, 17),
    ("tif", "RGB", 500, 375),
    ("jpg", "RGB", 800, 800),
    ("png", "RGB", 97, 131),
    ("jpg", "RGB", 257, 129),
    ("png", "RGBA", 64, 64),
    ("jpg", "L", 350, 260),
    ("webp", "RGB", 360, 240),
    ("png", "RGB", 32, 32),
]


def photo(rng: np.random.Generator, colour: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    """Smooth texture around a colour, plus fine noise: smoother than noise, as photos are."""
    coarse = np.clip(np.array(colour) + rng.integers(-70, 70, (height // 16 + 2, width // 16 + 2, 3)), 0, 255)
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    return np.clip(texture.astype(int) + rng.integers(-12, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def _transparent(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """RGBA: a clear border, a half-transparent band, an opaque middle."""
    h, w = pixels.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    alpha[h // 8 : h - h // 8, w // 8 : w - w // 8] = 128
    alpha[h // 4 : h - h // 4, w // 4 : w - w // 4] = 255
    return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")


def _save(img: Image.Image, mode: str, path: Path, rng: np.random.Generator) -> None:
    if mode == "RGBA":
        img = _transparent(np.asarray(img), rng)
    elif mode == "P":  # palette with one transparent index, as GIFs have
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.save(path, transparency=0)
        return
    else:
        img = img.convert(mode)
    if path.name.endswith(".exif.jpg"):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        img.save(path, exif=exif, quality=90)
        return
    img.save(path, **({"quality": 90} if path.suffix in (".jpg", ".webp") else {}))


def make_mixed_folder(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (suffix, mode, width, height) in enumerate(VARIANTS):
            img = Image.fromarray(photo(rng, colour, width, height))
            _save(img, mode, folder / f"{i:02d}-{mode.lower()}-{width}x{height}.{suffix}", rng)
    return root


def doc_block(language: str) -> str:
    """The first ```language block of docs/deploy.md: the reference client as published."""
    deploy = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
    return re.search(rf"```{language}\n(.*?)```", deploy.read_text(encoding="utf-8"), re.S).group(1)
