"""Dataset checks before training: inventory, unreadable files, exact duplicates, leakage, imbalance.

Every file is read once: its bytes are hashed (exact duplicates and train/val/test
leakage) and decoded at its own size (unreadable files, image sizes, grey or colour).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgcls.data.decode import decode_image
from imgcls.data.sources import find_split_folders, scan_class_folders
from imgcls.errors import DataError
from imgcls.progress import progress

SMALL_SIDE = 16  # images smaller than this on either side are listed as tiny


def _inspect(path: Path, max_pixels: int) -> dict:
    record = {"path": str(path), "sha256": None, "error": None}
    try:
        data = path.read_bytes()
    except OSError as err:
        record["error"] = f"cannot read ({err.strerror})"
        return record
    record["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        pixels = decode_image(data, max_pixels=max_pixels, name=str(path))
        record.update(height=pixels.shape[0], width=pixels.shape[1], channels=pixels.shape[2])
    except DataError as err:
        record["error"] = str(err).removeprefix(f"{path}: ")
    return record


def _splits(root: Path) -> dict[str, Path]:
    layout = find_split_folders(root)
    if layout is None:
        return {"all": root}
    return {name: folder for name, folder in layout.items() if folder is not None}


def check_dataset(data: str | Path, *, max_pixels: int = 64_000_000, workers: int = 4) -> dict:
    """A JSON-ready report of what is in a dataset and what is wrong with it."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    files = [
        (split, label, path)
        for split, folder in _splits(root).items()
        for label, paths in scan_class_folders(folder).items()
        for path in paths
    ]
    # Pillow releases the GIL while decoding, so threads overlap reading and decoding.
    with ThreadPoolExecutor(workers) as pool:
        records = list(
            progress(pool.map(lambda f: _inspect(f[2], max_pixels), files), total=len(files), desc="check", unit="img")
        )
    for (split, label, _), record in zip(files, records, strict=True):
        record.update(split=split, label=label)
    return _summarise(root, records)


def _summarise(root: Path, records: list[dict]) -> dict:
    readable = [r for r in records if r["error"] is None]
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in readable:
        counts[r["split"]][r["label"]] += 1
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for r in readable:
        by_hash[r["sha256"]].append(r)
    groups = [g for g in by_hash.values() if len(g) > 1]
    duplicates = [[{"path": r["path"], "split": r["split"], "label": r["label"]} for r in g] for g in groups]
    leakage = [d for d in duplicates if len({r["split"] for r in d}) > 1]
    conflicts = [d for d in duplicates if len({r["label"] for r in d}) > 1]
    per_split = {}
    for split, counter in counts.items():
        sizes = counter.values()
        per_split[split] = {
            "images": sum(sizes),
            "classes": dict(sorted(counter.items())),
            "imbalance_ratio": round(max(sizes) / min(sizes), 2) if sizes else None,
        }
    return {
        "data": str(root),
        "files": len(records),
        "splits": per_split,
        "unreadable": [{"path": r["path"], "reason": r["error"]} for r in records if r["error"] is not None],
        "exact_duplicates": duplicates,
        "leakage": leakage,
        "conflicting_labels": conflicts,
        "tiny_images": [r["path"] for r in readable if min(r["height"], r["width"]) < SMALL_SIDE],
        "channels": dict(Counter("grey" if r["channels"] == 1 else "colour" for r in readable)),
    }


def problems(report: dict) -> list[str]:
    """One line per kind of problem found, for people."""
    lines = []
    if report["unreadable"]:
        lines.append(f"{len(report['unreadable'])} unreadable file(s)")
    if report["exact_duplicates"]:
        lines.append(f"{len(report['exact_duplicates'])} group(s) of identical files")
    if report["leakage"]:
        lines.append(f"{len(report['leakage'])} identical file group(s) shared between splits (leakage)")
    if report["conflicting_labels"]:
        lines.append(f"{len(report['conflicting_labels'])} identical file group(s) under different classes")
    for split, info in report["splits"].items():
        if info["imbalance_ratio"] and info["imbalance_ratio"] >= 10:
            lines.append(f"{split}: largest class is {info['imbalance_ratio']}x the smallest")
    return lines
