"""Slightly cropped copies for the data doctor (the second rule of imgcls.doctor.near):
a few % cut off one or more sides, saved at the smaller size or rescaled.

- Candidates: the pHash of each thumbnail cut by 11 tried crops (none; 3% and 8% off every
  side; 6% off one side, 4 ways; 5% off two adjacent sides, 4 ways; CROP_BOXES) against
  the plain pHash of every other image, <= 6 bits: 10 exact searches of all ordered pairs
  and one of the upper triangle, computed from the stored thumbnails (bicubic resampling
  of the cut, then the DCT), so the scan is unchanged.
- Filter: per image and tried crop, 8x8 cells of the cut thumbnail and their derivatives
  by the 4 cut sides are precomputed; per candidate pair one least-squares step of the 4
  sides (at most 1.5 px each) and the RMS difference after it come from a few dot
  products. Kept: RMS <= 0.02.
- Decision: Gauss-Newton on the 4 sides (4 steps, cuts within -0.5..3.5 px, i.e. up to 11%)
  of the survivors, comparing 16x16 cells; a cropped copy when the RMS difference of the
  central 14x14 cells <= 0.016. RMS rather than the mean punishes a local difference (a
  print, a logo), which is what tells a copy from a look-alike garment, and 16x16 cells
  rather than 32x32 average away most of the residual of resampling a 28 px image twice:
  at equal recall the mean flags 2-3x and 32x32 cells 40x more real Fashion-MNIST pairs.
Measured on the planted subset: copies cropped by 1 px a side 16/16 (and the 17th
enlarged copy), distinct originals flagged 1 (the same duplicate photo) up to an RMS limit
of 0.02, 2 at 0.025. On 100 cropped copies of other training images per kind: 1 px off
each side 94%, 2 px off each side 91%, 2 px off one side 99%, 1 px off two adjacent sides
92%, 1 px a side then rescaled to 28 px 97%, random 1-5% off 1-4 sides (via an 8x
enlargement, half saved at ~26 px) 77%, random 5-8% 64%; no crop paired with an image it
was not cut from. Missed: cuts over 11% a side; about half of the random-cut misses are
copies whose resampling blur alone (8x bicubic round trip, then 26 px) leaves an RMS over
0.016 at the true cut, the rest are lost by the hash or the filter; flips, rotations,
colour or contrast changes. Real Fashion-MNIST (70,000): 7 pairs beyond
the 131 of rule 1 (2 across train/test); by eye 6 are one photo framed differently.
"""

from __future__ import annotations

import time

import numpy as np

from imgcls.doctor.hamming import hamming_cross, hamming_pairs
from imgcls.doctor.scan import THUMB_SIDE as SIDE

# Crops tried for candidates, as thumbnail pixels cut off (left, top, right, bottom); 1 px = 3.1%.
CROP_BOXES = (
    (0, 0, 0, 0),
    (1, 1, 1, 1),
    (2.5, 2.5, 2.5, 2.5),
    (2, 0, 0, 0),
    (0, 2, 0, 0),
    (0, 0, 2, 0),
    (0, 0, 0, 2),
    (1.5, 1.5, 0, 0),
    (0, 1.5, 1.5, 0),
    (0, 0, 1.5, 1.5),
    (1.5, 0, 0, 1.5),
)
# Bits between the pHash of a cut thumbnail and the other image's. 8 finds 1-11% more of the crop
# kinds of the benchmark but makes 3.5x the candidates (70,000 images: +10 s) and flags twice the
# real Fashion-MNIST pairs; at equal recall 6 with a looser decision limit flags fewer.
CROP_HASH_MAX = 6
# RMS on 8x8 cells after one linearised fit of the cut: the filter. On real Fashion-MNIST 3,621
# pairs pass (0.03: 42,604 and 2.7 s of alignment, 1-4% more of the crops found; 0.04: 176,276, 11 s).
CROP_FIT_MAX = 0.02
# RMS on 16x16 cells once aligned: the decision. Planted subset: 1 px crops found 14/16 at 0.014,
# 16/16 at 0.016, distinct pairs flagged 1 up to 0.02. Real Fashion-MNIST with 300 cropped copies
# of its test images: pairs beyond rule 1 at 0.012/0.014/0.016/0.018/0.02: 4/5/7/14/33, copies
# found 0.016: 1 px a side 47/50, then rescaled 50/50, 2 px one side 49/50, 1 px two sides 48/50,
# random 1-5% 86/100.
CROP_PIXEL_MAX = 0.016
CROP_SIDE_MAX = 3.5  # thumbnail pixels (11%): larger cuts are not "slightly cropped"
CROP_SIDE_MIN = -0.5  # a little outside the frame, for resampling slack
CROP_MAX_IMAGES = 250_000  # above this the crop search (11 all-pairs searches) is skipped, and said so


# --- cropping a thumbnail: bicubic resampling of a span of each axis, then averaging into cells ---


def _cubic(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys' bicubic kernel (a = -0.5, as Pillow's BICUBIC) and its slope."""
    a, s, x = -0.5, np.sign(x), np.abs(x)
    near, far = x <= 1, (x > 1) & (x < 2)
    value = np.where(near, (a + 2) * x**3 - (a + 3) * x**2 + 1, np.where(far, a * (x**3 - 5 * x**2 + 8 * x - 4), 0))
    slope = np.where(near, 3 * (a + 2) * x**2 - 2 * (a + 3) * x, np.where(far, a * (3 * x**2 - 10 * x + 8), 0))
    return value, s * slope


def crop_matrices(lo, hi, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (lo, hi): the (cells x SIDE) matrix that cuts lo px off the start and hi px off the end of
    a SIDE-px axis, resamples the rest to SIDE px (bicubic) and averages it into cells; and its derivatives
    by lo and by hi. Shapes (k, cells, SIDE)."""
    lo = np.atleast_1d(np.asarray(lo, np.float64))
    hi = np.atleast_1d(np.asarray(hi, np.float64))
    k, u = len(lo), np.arange(SIDE) + 0.5
    x = lo[:, None] + u * ((SIDE - lo - hi) / SIDE)[:, None] - 0.5  # source position of each output pixel
    taps = np.floor(x)[..., None] + np.arange(-1, 3)  # the 4 source pixels around it
    value, slope = _cubic(x[..., None] - taps)
    rows = np.arange(k)[:, None, None] * cells + (np.arange(SIDE) // (SIDE // cells))[None, :, None]
    index = (rows * SIDE + np.clip(taps, 0, SIDE - 1).astype(np.int64)).ravel()  # edges repeat, as in Pillow
    scale = SIDE // cells

    def matrix(weights: np.ndarray) -> np.ndarray:
        flat = np.bincount(index, weights=weights.ravel() / scale, minlength=k * cells * SIDE)
        return flat.reshape(k, cells, SIDE).astype(np.float32)

    d_lo = slope * (1 - u / SIDE)[None, :, None]  # d(source position)/d(lo) = 1 - u/SIDE
    d_hi = slope * (-u / SIDE)[None, :, None]
    return matrix(value), matrix(d_lo), matrix(d_hi)


def _project(thumbs: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """left @ thumb @ right.T for every thumbnail (uint8, scaled to [0, 1]), as two large matrix products."""
    out = np.empty((len(thumbs), len(left), len(right)), np.float32)
    for s in range(0, len(thumbs), chunk):
        t = thumbs[s : s + chunk].astype(np.float32) / 255.0
        a = (t.reshape(-1, SIDE) @ right.T).reshape(len(t), SIDE, len(right))  # (k, SIDE, r)
        b = left @ a.transpose(1, 0, 2).reshape(SIDE, -1)  # (l, k * r)
        out[s : s + chunk] = b.reshape(len(left), len(t), len(right)).transpose(1, 0, 2)
    return out


_DCT = (2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(SIDE)[None] + 1) / (2 * SIDE))).astype(np.float32)


def crop_hashes(thumbs: np.ndarray, box) -> np.ndarray:
    """pHash (8x8 lowest DCT frequencies above their median) of every thumbnail with box cut off."""
    left, top, right, bottom = box
    ys, xs = crop_matrices(top, bottom, SIDE)[0][0], crop_matrices(left, right, SIDE)[0][0]
    low = _project(thumbs, _DCT @ ys, _DCT @ xs).reshape(len(thumbs), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


FIT_CELLS, FIT_MARGIN = 8, 1  # the filter compares the central 6x6 of 8x8 cells
ALIGN_CELLS, ALIGN_MARGIN = 16, 1  # the decision compares the central 14x14 of 16x16 cells
FIT_STEP = 1.5  # thumbnail pixels the one-step fit may move each side of a tried crop
RIDGE = 1e-3  # keeps the 4x4 least-squares systems solvable on flat images


def _views(thumbs: np.ndarray, box, chunk: int = 4096) -> np.ndarray:
    """(n, 5, 36): every thumbnail with box cut off, as its central FIT cells, and the derivatives of those
    cells by the left, top, right and bottom cut (for a linearised fit of a slightly different crop)."""
    left, top, right, bottom = box
    inner = slice(FIT_MARGIN, FIT_CELLS - FIT_MARGIN)
    ys = np.concatenate([m[0, inner] for m in crop_matrices(top, bottom, FIT_CELLS)])  # y, d/dtop, d/dbottom
    xs = np.concatenate([m[0, inner] for m in crop_matrices(left, right, FIT_CELLS)])  # x, d/dleft, d/dright
    p = FIT_CELLS - 2 * FIT_MARGIN
    out = np.empty((len(thumbs), 5, p * p), np.float32)
    for s in range(0, len(thumbs), chunk):
        v = _project(thumbs[s : s + chunk], ys, xs).reshape(-1, 3, p, 3, p)  # (k, y-kind, p, x-kind, p)
        for slot, (yk, xk) in enumerate(((0, 0), (0, 1), (1, 0), (0, 2), (2, 0))):  # w, d/dl, d/dt, d/dr, d/db
            out[s : s + chunk, slot] = v[:, yk, :, xk, :].reshape(len(v), -1)
    return out


def _fit(views: np.ndarray, base: np.ndarray, box, i: np.ndarray, j: np.ndarray, chunk: int = 32_768) -> np.ndarray:
    """RMS difference between base[j] and views[i] after one least-squares step of the 4 cut sides (each
    moved at most FIT_STEP px and kept within the crop limits), from precomputed sums: cheap per pair."""
    w, jac = views[:, 0], views[:, 1:]
    jtj = np.einsum("nap,nbp->nab", jac, jac)
    inverse = np.linalg.inv(jtj + RIDGE * np.eye(4, dtype=np.float32))
    jw = np.einsum("nap,np->na", jac, w)
    ww, bb = (w * w).sum(axis=1), (base * base).sum(axis=1)
    lo = np.maximum(-FIT_STEP, CROP_SIDE_MIN - np.asarray(box, np.float32))
    hi = np.minimum(FIT_STEP, CROP_SIDE_MAX - np.asarray(box, np.float32))
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        a, b = i[s : s + chunk], j[s : s + chunk]
        dots = np.einsum("kap,kp->ka", views[a], base[b])  # w.b and J.b
        rr = bb[b] + ww[a] - 2 * dots[:, 0]  # |b - w|^2
        jr = dots[:, 1:] - jw[a]  # J.(b - w)
        step = np.clip(np.einsum("kab,kb->ka", inverse[a], jr), lo, hi)
        res = rr - 2 * (step * jr).sum(axis=1) + np.einsum("ka,kab,kb->k", step, jtj[a], step)
        out[s : s + chunk] = np.sqrt(np.maximum(res, 0) / w.shape[1])
    return out


def align_crops(
    thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, boxes: np.ndarray, *, iterations: int = 4, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each pair: the cut (left, top, right, bottom, thumbnail px) of image i that best matches image j,
    by Gauss-Newton from boxes, and the RMS difference of the central ALIGN cells there (the best seen)."""
    inner = slice(ALIGN_MARGIN, ALIGN_CELLS - ALIGN_MARGIN)
    cells = crop_matrices(0, 0, ALIGN_CELLS)[0][0, inner]
    best = np.empty(len(i), np.float32)
    best_box = np.asarray(boxes, np.float64).copy()
    for s in range(0, len(i), chunk):
        a = thumbs[i[s : s + chunk]].astype(np.float32) / 255.0
        b = cells @ (thumbs[j[s : s + chunk]].astype(np.float32) / 255.0) @ cells.T
        box = best_box[s : s + chunk].copy()
        low = np.full(len(a), np.inf, np.float32)
        for step in range(iterations + 1):
            ys, dyt, dyb = (m[:, inner] for m in crop_matrices(box[:, 1], box[:, 3], ALIGN_CELLS))
            xs, dxl, dxr = (m[:, inner] for m in crop_matrices(box[:, 0], box[:, 2], ALIGN_CELLS))
            z = ys @ a  # (k, p, SIDE)
            r = (b - z @ xs.transpose(0, 2, 1)).reshape(len(a), -1)
            rms = np.sqrt((r * r).mean(axis=1))
            better = rms < low
            low[better] = rms[better]
            best_box[s : s + chunk][better] = box[better]
            if step == iterations:
                break
            zx = a @ xs.transpose(0, 2, 1)  # (k, SIDE, p)
            jac = np.stack(
                [z @ dxl.transpose(0, 2, 1), dyt @ zx, z @ dxr.transpose(0, 2, 1), dyb @ zx], axis=1
            ).reshape(len(a), 4, -1)
            jtj = np.einsum("kap,kbp->kab", jac, jac) + RIDGE * np.eye(4, dtype=np.float32)
            move = np.linalg.solve(jtj, np.einsum("kap,kp->ka", jac, r)[..., None])[..., 0]
            box = np.clip(box + np.clip(move, -1, 1), CROP_SIDE_MIN, CROP_SIDE_MAX)
        best[s : s + chunk] = low
    return best, best_box


def _best_per_key(key: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the lowest score of each distinct key."""
    order = np.lexsort((score, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


def cropped_pairs(thumbs, limit, known, workers, stats) -> list[tuple[int, int, float, tuple]]:
    """(original, copy, aligned RMS, cut box) of every pair where one image is a slightly cropped copy of the
    other: hash candidates per tried crop, a cheap linearised fit, then alignment of the survivors."""
    n = len(thumbs)
    clock = time.perf_counter()
    plain = crop_hashes(thumbs, CROP_BOXES[0])
    base_views = _views(thumbs, CROP_BOXES[0])
    base = base_views[:, 0]
    found_i, found_j, found_k, found_fit = [], [], [], []
    searched = fitted = 0.0
    for k, box in enumerate(CROP_BOXES):
        start = time.perf_counter()
        if k == 0:
            i, j, _ = hamming_pairs(plain, CROP_HASH_MAX, workers=workers)
            i, j, views = np.concatenate([i, j]), np.concatenate([j, i]), base_views
        else:
            i, j, _ = hamming_cross(crop_hashes(thumbs, box), plain, CROP_HASH_MAX, workers=workers)
            views = _views(thumbs, box)
        stats["crop_candidates"] += len(i)
        fresh = ~np.isin(np.minimum(i, j) * n + np.maximum(i, j), known)  # not already a near-duplicate
        i, j = i[fresh], j[fresh]
        middle = time.perf_counter()
        fit = _fit(views, base, box, i, j)
        keep = fit <= CROP_FIT_MAX
        found_i.append(i[keep])
        found_j.append(j[keep])
        found_k.append(np.full(int(keep.sum()), k))
        found_fit.append(fit[keep])
        searched += middle - start
        fitted += time.perf_counter() - middle
    i, j, k, fit = (np.concatenate(x) for x in (found_i, found_j, found_k, found_fit))
    best = _best_per_key(i * n + j, fit)  # per ordered pair, the tried crop that fitted best
    i, j, k = i[best], j[best], k[best]
    stats["crop_fitted"] = len(i)
    start = time.perf_counter()
    rms, boxes = align_crops(thumbs, i, j, np.array(CROP_BOXES, np.float64)[k])
    keep = rms <= limit
    i, j, rms, boxes = i[keep], j[keep], rms[keep], boxes[keep]
    best = _best_per_key(np.minimum(i, j) * n + np.maximum(i, j), rms)  # per pair, the better direction
    stats["seconds_crop"] = {
        "hashes_and_search": round(searched, 2),
        "fit": round(fitted, 2),
        "align": round(time.perf_counter() - start, 2),
        "total": round(time.perf_counter() - clock, 2),
    }
    return [
        (int(a), int(b), float(c), tuple(float(x) for x in d))
        for a, b, c, d in zip(i[best], j[best], rms[best], boxes[best], strict=True)
    ]
