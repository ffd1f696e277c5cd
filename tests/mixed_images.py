"""A folder of photo-like images in the sizes and modes clients meet: large JPEGs (which imgcls
decodes at reduced scale), EXIF-rotated, transparent, palette, grey, CMYK, strips, 1-pixel-high."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CLASS_COLOURS

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
