"""The data doctor's one pass over the files: bytes hash, header facts, pixels, perceptual hashes, features.

Every file is read once. From its bytes come the sha256 (exact duplicates), the header
(format, stored mode, EXIF orientation) and the decoded pixels (unreadable files, sizes,
grey or colour). From the pixels come two 64-bit perceptual hashes (imagehash's pHash and
dHash, for near-duplicates) and a small fixed-length feature vector (for the label-error
model), so no later check has to decode an image again.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.data.decode import decode_image
from imgcls.data.reader import DEFAULT_MAX_FILE_MB, MB, read_image_file
from imgcls.data.sources import find_split_folders, scan_class_folders
from imgcls.errors import DataError
from imgcls.extras import require
from imgcls.progress import progress

EXIF_ORIENTATION = 0x0112
THUMB_SIDE = 32  # grey thumbnail that confirms near-duplicates pixel by pixel
FEATURE_SIDE = 16  # label-error features: the image as 16x16 grey levels plus a 4x4 colour grid
COLOUR_SIDE = 4


@dataclass
class FileRecord:
    """What one file is, and the numbers later checks need (hashes, features)."""

    path: str
    split: str
    label: str
    error: str | None = None
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None  # as stored (L, RGB, P, RGBA, ...)
    width: int = 0
    height: int = 0
    channels: int = 0  # after decoding: 1 grey, 3 colour
    exif_rotated: bool = False
    phash: int = 0
    dhash: int = 0
    thumb: np.ndarray | None = field(default=None, repr=False)  # THUMB_SIDE x THUMB_SIDE uint8 grey
    features: np.ndarray | None = field(default=None, repr=False)


def _hash_int(image_hash) -> int:
    """imagehash's 8x8 boolean hash as one unsigned 64-bit integer (row-major bits)."""
    bits = np.asarray(image_hash.hash, dtype=np.uint8).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _features(img: Image.Image, thumb: np.ndarray) -> np.ndarray:
    """Grey 16x16 and colour 4x4 thumbnails, in [0, 1]: enough for a fast linear model to
    tell classes apart on small images, and the same length whatever the image's size."""
    step = THUMB_SIDE // FEATURE_SIDE
    grey = thumb.reshape(FEATURE_SIDE, step, FEATURE_SIDE, step).mean(axis=(1, 3), dtype=np.float32)
    colour = np.asarray(img.convert("RGB").resize((COLOUR_SIDE, COLOUR_SIDE), Image.BILINEAR), dtype=np.float32)
    return np.concatenate([grey.ravel(), colour.ravel()]) / 255.0


def inspect_file(
    path: str, split: str, label: str, max_pixels: int, max_bytes: int = DEFAULT_MAX_FILE_MB * MB
) -> FileRecord:
    """One file's record; a file that cannot be read or decoded gets error set, never an exception."""
    imagehash = require("imagehash", "doctor")  # imported here: cli start-up never pays for it

    record = FileRecord(path=path, split=split, label=label)
    try:
        data = read_image_file(path, max_bytes=max_bytes)
    except DataError as err:
        record.error = str(err).removeprefix(f"{path}: ")
        return record
    record.sha256 = hashlib.sha256(data).hexdigest()
    try:
        pixels = decode_image(data, max_pixels=max_pixels, name=path)
        with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header only
            record.format, record.mode = header.format, header.mode
            record.exif_rotated = header.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    except DataError as err:
        record.error = str(err).removeprefix(f"{path}: ")
        return record
    except Exception as err:  # noqa: BLE001 - a damaged header is a finding about the file, not a crash
        record.error = f"cannot read the header ({type(err).__name__}: {err})"
        return record
    record.height, record.width, record.channels = pixels.shape
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    grey = img.convert("L")
    record.phash = _hash_int(imagehash.phash(grey))
    record.dhash = _hash_int(imagehash.dhash(grey))
    record.thumb = np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), dtype=np.uint8)
    record.features = _features(img, record.thumb)
    return record


def _inspect_many(items: list[tuple[str, str, str]], max_pixels: int) -> list[FileRecord]:
    return [inspect_file(path, split, label, max_pixels) for path, split, label in items]


def dataset_splits(root: Path) -> dict[str, Path]:
    """train/val/test folders of a split root, or the whole folder as one split named 'all'."""
    layout = find_split_folders(root)
    if layout is None:
        return {"all": root}
    return {name: folder for name, folder in layout.items() if folder is not None}


def list_dataset(root: Path, *, allow_outside: bool = False) -> list[tuple[str, str, str]]:
    """(path, split, label) of every image file under a dataset root (links that leave it are
    skipped unless allow_outside)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a folder of class folders or a root with train/ val/ test/.")
    return [
        (str(path), split, label)
        for split, folder in dataset_splits(root).items()
        for label, paths in scan_class_folders(folder, within=root, allow_outside=allow_outside).items()
        for path in paths
    ]


def scan_files(items: list[tuple[str, str, str]], *, max_pixels: int, workers: int | None = None) -> list[FileRecord]:
    """Inspect every file, in worker processes for large datasets.

    Hashing and thumbnails are small numpy and Pillow calls that hold the GIL, so threads
    do not overlap them; processes do (chunks of 500 files keep the pickling overhead small).
    """
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    chunk = 500
    if workers <= 1 or len(items) < 2 * chunk:
        return [inspect_file(p, s, lab, max_pixels) for p, s, lab in progress(items, desc="check", unit="img")]
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    records: list[FileRecord] = []
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(_inspect_many, part, max_pixels) for part in chunks]
        for future in progress(futures, total=len(futures), desc="check", unit="chunk"):
            records.extend(future.result())
    return records
