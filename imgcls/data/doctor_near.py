"""Near-duplicate pairs: perceptual-hash candidates, confirmed on pixels.

All pairs of n 64-bit hashes are compared with numpy: XOR and popcount (np.bitwise_count)
over blocks of 512 x 16,384 hashes, the upper triangle only. On 70,000 Fashion-MNIST images
that is 2.45 billion pairs in ~8 s on 2 cores, with memory bounded by the block (~70 MB),
and it is exact: unlike hash bucketing or multi-index hashing it cannot miss a pair within
the threshold, and it does not slow down when many hashes crowd together (they do on small,
centred images: 898 distinct Fashion-MNIST pairs share the same pHash).

Because hashes crowd on such images, a hash match alone is only a candidate. A pair is a
near-duplicate when its pHash AND dHash distances are within their limits AND the mean
absolute difference of the two 32x32 grey thumbnails is small. The defaults come from the
sweep in benchmarks/data_doctor.py (RESULTS.md) on 6,100 Fashion-MNIST images with planted
copies: at pHash <= 6, dHash <= 10, pixels <= 0.015 it finds 16/17 copies enlarged 1.5x and
17/17 re-encoded as JPEG, and flags 1 pair of the distinct originals (itself a duplicate photo
in Fashion-MNIST); a pixel limit of 0.02 flags 3, 0.03 flags 34, 0.05 flags 425. Copies cropped
by 1 px a side (a 7% rescale at 28 px) are not found: the hashes are not crop-invariant, and
limits loose enough to catch a third of them flag ~4,000 distinct pairs. A global pixel
measure also cannot tell one garment photographed with two different prints from a copy:
about 5 of the 37 train/test pairs it finds in Fashion-MNIST are such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASH_MAX = 6  # bits of 64; resized and JPEG-re-encoded copies measured at <= 4
DHASH_MAX = 10  # bits of 64; the same copies measured at <= 7
PIXEL_MAX = 0.015  # mean |difference| of 32x32 grey thumbnails, on a 0-1 scale (~4 grey levels)


@dataclass(frozen=True)
class NearThresholds:
    phash: int = PHASH_MAX
    dhash: int = DHASH_MAX
    pixels: float = PIXEL_MAX


def hamming_pairs(
    hashes: np.ndarray, max_distance: int, *, rows: int = 512, cols: int = 16_384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j whose 64-bit hashes differ in at most max_distance bits: (i, j, distance)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, rows):
        block = hashes[start : start + rows, None]
        for col in range(start, n, cols):
            dist = np.bitwise_count(block ^ hashes[None, col : col + cols])
            i, j = np.nonzero(dist <= max_distance)
            keep = j + col > i + start  # upper triangle: each pair once, never an image with itself
            i, j = i[keep], j[keep]
            found_i.append(i + start)
            found_j.append(j + col)
            found_d.append(dist[i, j])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.uint8)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


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
    phash: np.ndarray, dhash: np.ndarray, thumbs: np.ndarray, limits: NearThresholds = NearThresholds()
) -> list[tuple[int, int, int, int, float]]:
    """(i, j, pHash distance, dHash distance, pixel distance) of every near-duplicate pair, closest first."""
    i, j, pd = hamming_pairs(phash, limits.phash)
    dd = np.bitwise_count(np.asarray(dhash, dtype=np.uint64)[i] ^ np.asarray(dhash, dtype=np.uint64)[j])
    keep = dd <= limits.dhash
    i, j, pd, dd = i[keep], j[keep], pd[keep], dd[keep]
    px = pixel_distance(thumbs, i, j)
    keep = px <= limits.pixels
    order = np.argsort(px[keep], kind="stable")
    return [
        (int(a), int(b), int(c), int(d), round(float(e), 4))
        for a, b, c, d, e in zip(
            i[keep][order], j[keep][order], pd[keep][order], dd[keep][order], px[keep][order], strict=True
        )
    ]
