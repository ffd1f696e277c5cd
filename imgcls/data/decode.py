"""Bytes to pixels: one function that every path (training cache, evaluate, predict, serve) uses.

The same decode and resize run at training and at prediction, so a model sees the same
pixels for the same file. Rules:
- EXIF orientation is applied (phones store portrait photos sideways).
- Grey modes (1, L, LA, I;16, I, F) give one channel, every other mode three. Alpha is
  composited over white (a transparent background is a white page to a person, not black).
  16-bit and 32-bit integer grey is scaled from 0..65535 to 0..255; float grey is clipped
  to 0..255. CMYK, YCbCr, LAB, HSV and palette images are converted by Pillow.
- Images larger than `max_pixels` are refused before their pixels are read (decompression
  bombs); zero-size and undecodable files raise DataError naming the file.
- Only the formats imgcls supports are even tried (SUPPORTED_FORMATS): Pillow would otherwise
  probe some forty plugins on untrusted bytes, among them EPS, which runs Ghostscript.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgcls.data.reader import DEFAULT_MAX_FILE_MB, MB, read_image_file
from imgcls.errors import DataError, NotAnImageError, TooManyPixelsError

RESIZE_POLICIES = ("crop", "squash", "pad")
# Pillow's opener names (the JPEG opener also reads the multi-picture JPEGs cameras write).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF")


def _over_white(img: Image.Image, mode: str) -> Image.Image:
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    background.alpha_composite(img.convert("RGBA"))
    return background.convert(mode)


def _high_bit_grey(img: Image.Image) -> Image.Image:
    pixels = np.asarray(img)
    if img.mode == "F":
        pixels = np.clip(pixels, 0, 255)
    else:  # I;16 variants and I: the range of 16-bit samples
        pixels = np.clip(pixels.astype(np.float64) / 257.0, 0, 255)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L")


def to_standard_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 'L' (grey) or 'RGB', by the rules in the module doc."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("LA", "La"):
        return _over_white(img, "L")
    if mode.startswith("I") or mode == "F":
        return _high_bit_grey(img)
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        return _over_white(img, "RGB")
    return img.convert("RGB")


DRAFT_MARGIN = 2
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _crop_box(width: int, height: int, crop_pct: float = 1.0) -> tuple[int, int, int, int]:
    """The centred square of side crop_pct x the shorter side, in whole pixels (timm's eval
    crop: resize the shorter side to size / crop_pct, then take the centre size x size)."""
    side = max(1, round(min(width, height) * crop_pct))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_square(
    img: Image.Image, size: int, policy: str, *, crop_pct: float = 1.0, interpolation: str = "bilinear"
) -> Image.Image:
    """Fit an image into size x size: centre crop of the shorter side (crop_pct of it), squash,
    or pad with black; resampled with Pillow's antialiasing filter of that interpolation."""
    if img.size == (size, size) and crop_pct == 1.0:
        return img
    resample = INTERPOLATIONS[interpolation]
    if policy == "crop":
        # Cut first, then resize: the same two operations a client (or the exported ONNX graph)
        # does, whereas Pillow's resize(box=) also reads pixels just outside the box. Cutting
        # first also keeps absurd aspect ratios (1 x 100000) cheap.
        return img.crop(_crop_box(*img.size, crop_pct)).resize((size, size), resample)
    if policy == "squash":
        return img.resize((size, size), resample)
    if policy == "pad":
        scale = size / max(img.size)
        inner = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        canvas = Image.new(img.mode, (size, size))
        canvas.paste(img.resize(inner, resample), ((size - inner[0]) // 2, (size - inner[1]) // 2))
        return canvas
    raise ValueError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")


def _open(source: bytes, name: str, max_pixels: int, size: int | None) -> Image.Image:
    stream = io.BytesIO(source)
    with warnings.catch_warnings():
        # Our own limit is checked below; Pillow's warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.init()  # registers every plugin (once), so that each supported format has its opener
        img = Image.open(stream, formats=SUPPORTED_FORMATS)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DataError(f"{name}: image has zero size ({width}x{height}).")
        if width * height > max_pixels:
            raise TooManyPixelsError(
                f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                "(data.max_pixels); shrink the image or raise the limit."
            )
        if size is not None and img.format == "JPEG":
            # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (4-20x faster on phone photos), but
            # never below twice the size asked for: the antialiased resize from there is what a
            # client that decodes at full scale gets, within 1e-2 in probability.
            img.draft(img.mode, (DRAFT_MARGIN * size, DRAFT_MARGIN * size))
        img.load()
    return ImageOps.exif_transpose(img)


def decode_image(
    source: Path | str | bytes,
    *,
    size: int | None = None,
    resize: str = "crop",
    channels: int | None = None,
    max_pixels: int = 64_000_000,
    name: str | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
) -> np.ndarray:
    """Decode a file or bytes into a uint8 array of shape (H, W, C).

    channels None keeps the image's own (1 for grey, 3 for colour); 1 or 3 converts.
    size resizes to size x size with the given policy. Raises DataError naming the file.
    A path is read by read_image_file: a regular file of at most max_bytes.
    """
    if isinstance(source, str):
        source = Path(source)
    name = name or (str(source) if isinstance(source, Path) else "<bytes>")
    if isinstance(source, Path):
        source = read_image_file(source, max_bytes=max_bytes, name=name)  # regular files only, bounded
    if not source:
        raise DataError(f"{name}: empty file (0 bytes).")
    try:
        img = to_standard_mode(_open(source, name, max_pixels, size))
        if channels == 1 and img.mode != "L":
            img = img.convert("L")
        elif channels == 3 and img.mode != "RGB":
            img = img.convert("RGB")
        if size is not None:
            img = resize_square(img, size, resize, crop_pct=crop_pct, interpolation=interpolation)
        pixels = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise NotAnImageError(f"{name}: not an image imgcls can read (JPEG, PNG, WebP, BMP, TIFF or GIF).") from None
    except Image.DecompressionBombError as err:
        raise TooManyPixelsError(f"{name}: too many pixels, refused as a possible decompression bomb ({err})") from None
    except PermissionError as err:
        raise DataError(f"{name}: cannot read ({err.strerror}).") from None
    except OSError as err:
        raise DataError(f"{name}: cannot decode ({err}); the file may be truncated.") from None
    except Exception as err:  # noqa: BLE001 - Pillow's plugins raise many types on hostile bytes
        raise DataError(f"{name}: cannot decode ({type(err).__name__}: {err}).") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
