"""The data doctor on Fashion-MNIST: planted problems (precision, recall, time), then the real split.

Part 1, planted: a seeded subset (default 5,000 train / 1,000 test PNGs) is written to
.data/doctor-planted/, and into it go, from disjoint source images:
  - 50 exact duplicates: train files copied byte for byte into test (same class)
  - 50 near-duplicates: train images written into test as resized (1.5x, PNG), re-encoded
    (JPEG quality 75) or cropped (1 px off each side of 28, then PNG), 17/17/16
  - 100 flipped labels: train files moved to another class folder (seeded)
  - 20 corrupt files: 10 truncated PNGs, 5 empty files, 5 of random bytes
`check_dataset` runs once; for each detector the script prints precision and recall against
what was planted, and the seconds of each stage. Label errors also get precision among the
top 100 of the ranking. A near-duplicate threshold sweep over the same subset shows how the
defaults were chosen: recall per kind of copy against the pairs flagged among distinct images,
for the pixel rule and for the crop rule (aligned RMS limit). A second set of crops, written to
.data/doctor-crops/ from 100 unplanted training images per kind (one side, two sides, four
sides, rescaled back to 28 px, random cuts of 1-5% and 5-8% on 1-4 sides), shows which crops
are found, with the candidate counts and seconds of the crop search.

Part 2, real: `check_dataset` on all 60,000 + 10,000 Fashion-MNIST PNGs (.data/fashion-mnist,
written by `imgcls data get` when missing): exact and near-duplicates within and across the
splits, conflicting labels, likely label errors, and the
seconds; the pair search is timed against imagehash's own per-pair distance on a sample.
The HTML and JSON reports go to .data/doctor-fashion-mnist.{html,json} for a look at the pairs.

    .venv/bin/python benchmarks/data_doctor.py             # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/data_doctor.py --quick     # part 1 only
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from imgcls.doctor.check import check_dataset, label_model_line
from imgcls.doctor.crops import CROP_BOXES
from imgcls.doctor.hamming import hamming_pairs
from imgcls.doctor.near import NearThresholds, near_duplicate_pairs, pixel_distance
from imgcls.doctor.scan import inspect_file, list_dataset, scan_files

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
FOLDERS = [name.replace("/", "_") for name in FASHION_MNIST_CLASSES]  # as `imgcls data get` names them


def write_subset(root: Path, n_train: int, n_test: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    """Seeded Fashion-MNIST PNGs as root/train and root/test class folders; returns the paths per split."""
    if root.exists():
        shutil.rmtree(root)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_fashion_mnist(split)
        chosen = rng.choice(len(labels), n, replace=False)
        out[split] = []
        for k in chosen:
            path = root / split / FOLDERS[labels[k]] / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(path)
            out[split].append(path)
    return out


def near_copy(img: Image.Image, kind: str) -> tuple[Image.Image, str]:
    if kind == "resized":
        return img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.BICUBIC), "png"
    if kind == "jpeg":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=75)
        return Image.open(buffer), "jpg"
    return img.crop((1, 1, img.width - 1, img.height - 1)), "png"  # crop


def plant(root: Path, files: dict[str, list[Path]], rng: np.random.Generator) -> dict:
    """Plant the problems; returns what was planted (paths as strings)."""
    train = list(files["train"])
    order = rng.permutation(len(train))
    exact_src = [train[k] for k in order[:50]]
    near_src = [train[k] for k in order[50:100]]
    flip_src = [train[k] for k in order[100:200]]
    corrupt_src = [train[k] for k in order[200:210]]
    truth: dict = {"exact": set(), "near": {}, "flipped": {}, "corrupt": set()}
    for i, src in enumerate(exact_src):
        dst = root / "test" / src.parent.name / f"dup{i:03d}.png"
        shutil.copy(src, dst)
        truth["exact"].add(frozenset((str(src), str(dst))))
    for i, src in enumerate(near_src):
        kind = ("resized", "jpeg", "crop")[i % 3]
        img, ext = near_copy(Image.open(src), kind)
        dst = root / "test" / src.parent.name / f"near{i:03d}.{ext}"
        img.save(dst)
        truth["near"][frozenset((str(src), str(dst)))] = kind
    for src in flip_src:
        other = FOLDERS[(FOLDERS.index(src.parent.name) + rng.integers(1, len(FOLDERS))) % len(FOLDERS)]
        dst = root / "train" / other / src.name
        shutil.move(src, dst)
        truth["flipped"][str(dst)] = src.parent.name
    for i, src in enumerate(corrupt_src):
        data = src.read_bytes()
        (root / "train" / src.parent.name / f"truncated{i:02d}.png").write_bytes(data[: len(data) // 2])
        truth["corrupt"].add(str(root / "train" / src.parent.name / f"truncated{i:02d}.png"))
    for i in range(5):
        empty = root / "train" / FOLDERS[i] / f"empty{i}.png"
        empty.write_bytes(b"")
        noise = root / "test" / FOLDERS[i] / f"noise{i}.png"
        noise.write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
        truth["corrupt"] |= {str(empty), str(noise)}
    return truth


def pr(found: set, truth: set) -> str:
    hit = len(found & truth)
    precision = hit / len(found) if found else float("nan")
    return f"precision {precision:.3f} ({hit}/{len(found)}), recall {hit / len(truth):.3f} ({hit}/{len(truth)})"


def part_planted(args) -> None:
    rng = np.random.default_rng(args.seed)
    root = DATA / "doctor-planted"
    truth = plant(root, write_subset(root, args.train, args.test, rng), rng)
    start = time.perf_counter()
    report = check_dataset(root, seed=args.seed)
    total = time.perf_counter() - start
    print(f"\n== planted problems: {args.train:,} train + {args.test:,} test Fashion-MNIST PNGs, seed {args.seed}")
    print(f"check_dataset: {report['files']:,} files in {total:.1f} s; stages (s): {report['seconds']}")
    print(f"  near-duplicate search: {search_summary(report['near_duplicate_search'])}")
    exact = {frozenset(r["path"] for r in g) for g in report["leakage"]}
    print(f"exact duplicates across train/test: {pr(exact, truth['exact'])}")
    near = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["near_duplicates"]}
    print(f"near-duplicates (all flagged pairs): {pr(near, set(truth['near']))}")
    for kind in ("resized", "jpeg", "crop"):
        planted = {pair for pair, k in truth["near"].items() if k == kind}
        print(f"  {kind:8s} recall {len(near & planted) / len(planted):.3f} ({len(near & planted)}/{len(planted)})")
    leak = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["near_leakage"]}
    print(f"near-duplicate leakage train/test: {pr(leak, set(truth['near']))}")
    issues = report["label_errors"]["issues"]
    flagged = {i["path"] for i in issues}
    print(f"label errors ({report['label_errors']['checked']:,} checked): {pr(flagged, set(truth['flipped']))}")
    print(f"  label model: {label_model_line(report['label_errors'])}; judged: {report['label_errors']['judged']}")
    top = {i["path"] for i in issues[:100]}
    print(f"  precision of the top 100: {len(top & set(truth['flipped'])) / max(1, len(top)):.3f}")
    right = sum(truth["flipped"].get(i["path"]) == i["suggested"] for i in issues)
    print(f"  flagged flips whose suggested label is the original: {right}/{len(flagged & set(truth['flipped']))}")
    corrupt = {u["path"] for u in report["unreadable"]}
    print(f"corrupt files: {pr(corrupt, truth['corrupt'])}")
    print(f"conflicting labels (none planted): {report['findings']['conflict']}")
    sweep(root, truth, rng)


def search_summary(search: dict) -> str:
    """The candidate counts and seconds of a near-duplicate search, on one line."""
    crop = search.get("seconds_crop", {})
    return (
        f"{search.get('candidates', 0):,} pHash candidates for the pixel rule ({search.get('seconds_pixels')} s); "
        f"crop rule: "
        f"{search.get('crop_candidates', 0):,} hash candidates over {len(CROP_BOXES)} tried crops, "
        f"{search.get('crop_fitted', 0):,} left by the linear fit and aligned; seconds {crop}"
    )


def sweep(root: Path, truth: dict, rng: np.random.Generator) -> None:
    """Recall per kind of planted copy, and pairs flagged among distinct images, per threshold."""
    records = [r for r in scan_files(list_dataset(root), max_pixels=64_000_000) if r.error is None]
    index = {r.path: k for k, r in enumerate(records)}
    phash = np.array([r.phash for r in records], dtype=np.uint64)
    dhash = np.array([r.dhash for r in records], dtype=np.uint64)
    thumbs = np.stack([r.thumb for r in records])
    i, j, pd = hamming_pairs(phash, 12)
    dd = np.bitwise_count(dhash[i] ^ dhash[j])
    px = pixel_distance(thumbs, i, j)
    planted = {frozenset((index[a], index[b])): kind for pair, kind in truth["near"].items() for a, b in [tuple(pair)]}
    exact = {frozenset((index[a], index[b])) for pair in truth["exact"] for a, b in [tuple(pair)]}
    kinds = np.array(
        [
            planted.get(frozenset((a, b)), "exact" if frozenset((a, b)) in exact else "")
            for a, b in zip(i, j, strict=True)
        ]
    )
    print("\nnear-duplicate threshold sweep (pHash <= P and dHash <= D and 32x32 pixel distance <= X):")
    print(f"{'P':>3} {'D':>3} {'X':>6} {'resized':>8} {'jpeg':>6} {'crop':>6} {'distinct pairs flagged':>23}")
    for p, d, x in [
        (4, 8, 0.02),
        (6, 10, 0.01),
        (6, 10, 0.015),
        (6, 10, 0.02),
        (6, 64, 0.015),
        (6, 10, 0.03),
        (6, 10, 0.05),
        (8, 12, 0.02),
        (12, 12, 0.03),
        (12, 64, 0.05),
        (6, 64, 1.0),
    ]:
        keep = (pd <= p) & (dd <= d) & (px <= x)
        recall = [((kinds == k) & keep).sum() / max(1, (kinds == k).sum()) for k in ("resized", "jpeg", "crop")]
        false = (keep & (kinds == "")).sum()
        print(f"{p:>3} {d:>3} {x:>6} {recall[0]:>8.2f} {recall[1]:>6.2f} {recall[2]:>6.2f} {false:>23,}")

    # The crop rule on top of the default pixel rule: recall and distinct pairs per aligned RMS limit.
    limits = (0.010, 0.012, 0.014, 0.016, 0.018, 0.020, 0.025)
    found = near_duplicate_pairs(phash, dhash, thumbs, NearThresholds(crop_pixels=max(limits)))
    total = {k: sum(1 for v in planted.values() if v == k) for k in ("resized", "jpeg", "crop")}
    print("\ncrop rule sweep (default pixel rule, plus cropped copies whose aligned RMS difference <= R):")
    print(f"{'R':>6} {'resized':>8} {'jpeg':>6} {'crop':>6} {'distinct pairs flagged':>23}")
    for limit in (None, *limits):
        flagged = {frozenset((p.i, p.j)) for p in found if p.aligned is None or (limit and p.aligned <= limit)}
        recall = [sum(planted.get(f) == k for f in flagged) / total[k] for k in total]
        false = sum(1 for f in flagged if f not in planted and f not in exact)
        name = f"{limit:.3f}" if limit else "none"
        print(f"{name:>6} {recall[0]:>8.2f} {recall[1]:>6.2f} {recall[2]:>6.2f} {false:>23,}")
    crop_kinds(records, truth, rng)


CROP_KINDS = {
    "1 px off each side (3.6%)": (1, 1, 1, 1),
    "2 px off each side (7%)": (2, 2, 2, 2),
    "2 px off one side": "one-side",
    "1 px off two adjacent sides": "corner",
    "1 px off each side, rescaled to 28": "rescaled",
    "random 1-5% off 1-4 sides": (0.01, 0.05),
    "random 5-8% off 1-4 sides": (0.05, 0.08),
}


def crop_copy(img: Image.Image, kind, rng: np.random.Generator) -> Image.Image:
    """A cropped copy of a 28x28 image, as CROP_KINDS describes it."""
    w, h = img.size
    if kind == "one-side":
        cut = [0, 0, 0, 0]
        cut[rng.integers(4)] = 2
        return img.crop((cut[0], cut[1], w - cut[2], h - cut[3]))
    if kind == "corner":
        side = rng.integers(4)
        cut = [int(k in (side, (side + 1) % 4)) for k in range(4)]
        return img.crop((cut[0], cut[1], w - cut[2], h - cut[3]))
    if kind == "rescaled":
        return img.crop((1, 1, w - 1, h - 1)).resize((w, h), Image.BICUBIC)
    if isinstance(kind[0], float):  # random fractions, cut from an 8x enlargement (sub-pixel)
        big = img.resize((8 * w, 8 * h), Image.BICUBIC)
        sides = rng.choice(4, rng.integers(1, 5), replace=False)
        cut = np.zeros(4)
        cut[sides] = rng.uniform(*kind, len(sides))
        left, top, right, bottom = (cut * 8 * np.array([w, h, w, h])).round().astype(int)
        part = big.crop((left, top, 8 * w - right, 8 * h - bottom))
        size = (w, h) if rng.random() < 0.5 else (round(part.width / 8), round(part.height / 8))
        return part.resize(size, Image.BICUBIC)
    left, top, right, bottom = kind
    return img.crop((left, top, w - right, h - bottom))


def crop_kinds(records: list, truth: dict, rng: np.random.Generator, per_kind: int = 100) -> None:
    """Which crops the default near-duplicate rules find, and what it costs: cropped copies of unplanted
    training images next to the planted subset."""
    used = {path for pair in list(truth["near"]) + list(truth["exact"]) for path in pair} | set(truth["flipped"])
    sources = [k for k, r in enumerate(records) if r.split == "train" and r.path not in used]
    chosen = rng.choice(sources, per_kind * len(CROP_KINDS), replace=False)
    folder = DATA / "doctor-crops"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    copies, kind_of = [], {}
    for n, (name, kind) in enumerate(CROP_KINDS.items()):
        for m, k in enumerate(chosen[n * per_kind : (n + 1) * per_kind]):
            path = folder / f"k{n}-{m:03d}.png"
            crop_copy(Image.open(records[k].path), kind, rng).save(path)
            copies.append(inspect_file(str(path), "crops", "", 64_000_000))
            kind_of[frozenset((int(k), len(records) + len(copies) - 1))] = name
    everything = records + copies
    search: dict = {}
    start = time.perf_counter()
    found = near_duplicate_pairs(
        np.array([r.phash for r in everything], dtype=np.uint64),
        np.array([r.dhash for r in everything], dtype=np.uint64),
        np.stack([r.thumb for r in everything]),
        stats=search,
    )
    seconds = time.perf_counter() - start
    flagged = {frozenset((p.i, p.j)): p for p in found}
    index = {r.path: k for k, r in enumerate(records)}
    planted = {frozenset(index[p] for p in pair) for pair in list(truth["near"]) + list(truth["exact"])}
    distinct = sum(1 for f in flagged if max(f) < len(records) and f not in planted)
    stray = sum(1 for f in flagged if max(f) >= len(records) and f not in kind_of)  # a copy with another image
    print(f"\ncropped copies of {per_kind} unplanted training images per kind, beside the {len(records):,} images:")
    print(f"{'kind of copy':<38} {'found':>6} {'by pixels':>10} {'by crop':>8}")
    for name in CROP_KINDS:
        pairs = [f for f, v in kind_of.items() if v == name]
        hits = [flagged[f] for f in pairs if f in flagged]
        by_crop = sum(p.aligned is not None for p in hits)
        print(f"{name:<38} {len(hits) / len(pairs):>6.2f} {len(hits) - by_crop:>10} {by_crop:>8}")
    print(
        f"distinct pairs flagged among the {len(records):,} (planted copies aside): {distinct}; "
        f"a crop with an image it was not cut from: {stray}"
    )
    print(f"near-duplicate search over {len(everything):,} images: {seconds:.1f} s; {search_summary(search)}")


def part_real(args) -> None:
    root = DATA / "fashion-mnist"
    if not (root / "train").is_dir():
        subprocess.run([sys.executable, "-m", "imgcls", "data", "get", "fashion-mnist", "--out", str(root)], check=True)
    start = time.perf_counter()
    report = check_dataset(root, seed=args.seed)
    total = time.perf_counter() - start
    print(f"\n== real Fashion-MNIST: {report['files']:,} files in {total:.1f} s; stages (s): {report['seconds']}")
    for split, info in report["splits"].items():
        print(f"  {split}: {info['images']:,} images, imbalance {info['imbalance_ratio']}x, modes {info['modes']}")
    print(f"  unreadable {len(report['unreadable'])}; identical-file groups {len(report['exact_duplicates'])}")
    within = {}
    for p in report["near_duplicates"]:
        key = "/".join(sorted((p["a"]["split"], p["b"]["split"])))
        within[key] = within.get(key, 0) + 1
    print(f"  near-duplicate pairs: {len(report['near_duplicates']):,} ({within})")
    cropped = [p for p in report["near_duplicates"] if "cropped" in p]
    across = sum(p["a"]["split"] != p["b"]["split"] for p in cropped)
    print(f"  of which cropped copies (found by alignment): {len(cropped):,}, {across} across train and test")
    print(f"  near-duplicate search: {search_summary(report['near_duplicate_search'])}")
    print(f"  near-duplicate pairs across train and test (leakage): {len(report['near_leakage']):,}")
    involved = {p["b"]["path"] if p["b"]["split"] == "test" else p["a"]["path"] for p in report["near_leakage"]}
    print(f"  test images with a near-duplicate in train: {len(involved):,} of {report['splits']['test']['images']:,}")
    print(f"  near-duplicate pairs under different classes: {len(report['near_conflicts']):,}")
    labels = report["label_errors"]
    print(f"  likely label errors: {len(labels['issues']):,} among {labels['checked']:,} checked")
    pairs = {}
    for issue in labels["issues"]:
        key = f"{issue['given']} -> {issue['suggested']}"
        pairs[key] = pairs.get(key, 0) + 1
    print(f"  most common (given -> suggested): {sorted(pairs.items(), key=lambda kv: -kv[1])[:6]}")
    from imgcls.doctor.html import write_html

    write_html(report, DATA / "doctor-fashion-mnist.html")
    (DATA / "doctor-fashion-mnist.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    time_pair_search(root)


def time_pair_search(root: Path) -> None:
    """The blocked popcount search over all 70,000 pHashes, against imagehash's own per-pair distance."""
    import imagehash

    records = [r for r in scan_files(list_dataset(root), max_pixels=64_000_000) if r.error is None]
    phash = np.array([r.phash for r in records], dtype=np.uint64)
    start = time.perf_counter()
    i, _, _ = hamming_pairs(phash, NearThresholds().phash)
    blocked = time.perf_counter() - start
    n = len(phash)
    sample = [imagehash.hex_to_hash(f"{int(h):016x}") for h in phash[:1500]]
    start = time.perf_counter()
    close = sum(sample[a] - sample[b] <= NearThresholds().phash for a in range(1500) for b in range(a + 1, 1500))
    per_pair = (time.perf_counter() - start) / (1500 * 1499 / 2)
    all_pairs = n * (n - 1) / 2
    print(f"\npair search over {n:,} pHashes ({all_pairs / 1e9:.2f} billion pairs):")
    print(f"  blocked numpy popcount {blocked:.1f} s,")
    print(f"  {len(i):,} candidate pairs; imagehash's per-pair distance in Python: {per_pair * 1e6:.2f} us a pair,")
    slower = per_pair * all_pairs / blocked
    print(
        f"  {per_pair * all_pairs / 60:.0f} min for all pairs ({slower:.0f}x slower); {close} close pairs in the sample"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="planted problems only, not the real 70,000")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"load average before: {load}")
    part_planted(args)
    if not args.quick:
        part_real(args)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
