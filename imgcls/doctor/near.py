"""Near-duplicate pairs: perceptual-hash candidates (imgcls.doctor.hamming), confirmed on
pixels; cropped copies found by alignment (imgcls.doctor.crops).

Two rules make a pair; the report says which (a cropped pair carries the cut).

1. As they are. pHash <= 6 AND dHash <= 10 bits AND mean |difference| of the 32x32 grey
   thumbnails <= 0.015. Because hashes crowd, a hash match is only a candidate. On the
   planted subset of benchmarks/data_doctor.py (6,100 Fashion-MNIST images) it finds 16/17
   copies enlarged 1.5x and 17/17 re-encoded as JPEG, and flags 1 pair of the distinct
   originals (itself a duplicate photo in Fashion-MNIST); a pixel limit of 0.02 flags 3, 0.03
   flags 34, 0.05 flags 425. It finds no copy cropped by 1 px a side (0/16): at 28 px that
   is a 7.7% zoom, beyond what the hashes and a pixel-by-pixel difference tolerate, and
   limits loose enough to catch a third of them flag ~4,000 distinct pairs.

2. Slightly cropped copies (imgcls.doctor.crops): candidates by the pHash of tried crops,
   confirmed by aligning the cut.

Cost on 70,000 Fashion-MNIST images, 2 cores: rule 1 in ~2.5 s; the crop rule in 22 s: 9.8
million hash candidates (~1.5 s per ordered search), 3,621 left by the filter (2.6 s),
aligned in 0.3 s. The whole stage 24.7 s where it took 8.6 s, the whole check 57 s where it
took 42 s. The crop rule needs 11 all-pairs searches, so above CROP_MAX_IMAGES it is skipped
(and the search stats say so). A global pixel measure still cannot tell one garment
photographed with two different prints from a copy: about 5 of the 37 train/test pairs of
rule 1 in Fashion-MNIST are such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from imgcls.doctor.crops import CROP_MAX_IMAGES, CROP_PIXEL_MAX, cropped_pairs
from imgcls.doctor.hamming import hamming_pairs
from imgcls.doctor.scan import THUMB_SIDE as SIDE

PHASH_MAX = 6  # bits of 64; resized and JPEG-re-encoded copies measured at <= 4
DHASH_MAX = 10  # bits of 64; the same copies measured at <= 7
PIXEL_MAX = 0.015  # mean |difference| of 32x32 grey thumbnails, on a 0-1 scale (~4 grey levels)


@dataclass(frozen=True)
class NearThresholds:
    phash: int = PHASH_MAX
    dhash: int = DHASH_MAX
    pixels: float = PIXEL_MAX
    crop_pixels: float | None = CROP_PIXEL_MAX  # None: do not look for cropped copies


@dataclass(frozen=True)
class NearPair:
    """Images i and j are near-duplicates; crop is set when one is a cropped copy of the other."""

    i: int
    j: int
    phash: int  # bits between the two images' pHashes
    dhash: int
    pixels: float  # mean |difference| of the 32x32 thumbnails as they are
    aligned: float | None = None  # RMS difference once the crop is aligned (cropped pairs only)
    original: int | None = None  # i or j: the image the other one was cut from
    crop: tuple[float, float, float, float] | None = None  # % cut off its left, top, right, bottom


def pixel_distance(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
    """Mean absolute difference, in [0, 1], between thumbnails i and j (uint8 arrays of one shape)."""
    flat = thumbs.reshape(len(thumbs), -1)
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), chunk):
        a = flat[i[start : start + chunk]].astype(np.int16)
        b = flat[j[start : start + chunk]].astype(np.int16)
        out[start : start + chunk] = np.abs(a - b).mean(axis=1) / 255.0
    return out


def near_duplicate_pairs(
    phash: np.ndarray,
    dhash: np.ndarray,
    thumbs: np.ndarray,
    limits: NearThresholds = NearThresholds(),
    *,
    workers: int | None = None,
    stats: dict | None = None,
) -> list[NearPair]:
    """Every near-duplicate pair: first those whose thumbnails match as they are (closest first), then the
    cropped copies (closest first). stats, when given, receives the candidate counts and seconds."""
    stats = {} if stats is None else stats
    stats.update(candidates=0, crop_candidates=0, crop_fitted=0)
    phash = np.asarray(phash, dtype=np.uint64)
    dhash = np.asarray(dhash, dtype=np.uint64)
    started = time.perf_counter()
    i, j, pd = hamming_pairs(phash, limits.phash, workers=workers)
    stats["candidates"] = len(i)
    dd = np.bitwise_count(dhash[i] ^ dhash[j])
    keep = dd <= limits.dhash
    i, j, pd, dd = i[keep], j[keep], pd[keep], dd[keep]
    px = pixel_distance(thumbs, i, j)
    keep = px <= limits.pixels
    order = np.argsort(px[keep], kind="stable")
    pairs = [
        NearPair(int(a), int(b), int(c), int(d), round(float(e), 4))
        for a, b, c, d, e in zip(
            i[keep][order], j[keep][order], pd[keep][order], dd[keep][order], px[keep][order], strict=True
        )
    ]
    stats["seconds_pixels"] = round(time.perf_counter() - started, 2)
    if limits.crop_pixels is None or len(thumbs) < 2:
        return pairs
    if len(thumbs) > CROP_MAX_IMAGES:
        stats["crop_skipped"] = f"{len(thumbs):,} images, over {CROP_MAX_IMAGES:,}: cropped copies not searched"
        return pairs
    n = len(thumbs)
    known = np.array(sorted(min(p.i, p.j) * n + max(p.i, p.j) for p in pairs), dtype=np.int64)
    cropped = cropped_pairs(thumbs, limits.crop_pixels, known, workers, stats)
    if cropped:
        a = np.array([c[0] for c in cropped])
        b = np.array([c[1] for c in cropped])
        pds = np.bitwise_count(phash[a] ^ phash[b])
        dds = np.bitwise_count(dhash[a] ^ dhash[b])
        pxs = pixel_distance(thumbs, a, b)
        for (orig, copy, rms, box), p, d, x in zip(cropped, pds, dds, pxs, strict=True):
            first, second = min(orig, copy), max(orig, copy)
            percent = tuple(round(max(0.0, side) * 100 / SIDE, 1) for side in box)
            pairs.append(NearPair(first, second, int(p), int(d), round(float(x), 4), round(rms, 4), orig, percent))
    return pairs
