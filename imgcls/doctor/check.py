"""The data doctor: what is in a dataset, and what is wrong with it, before it quietly ruins a model.

One pass reads every file (doctor_scan); the checks then work on its records:
  - inventory per split and class: counts, imbalance, sizes, modes, formats, tiny, grey/colour, EXIF-rotated
  - unreadable files, with the decoder's reason
  - exact duplicates (same bytes) and near-duplicates (doctor_near: perceptual hashes confirmed on pixels,
    and slightly cropped copies found by aligning the crop), within and across splits; across splits they
    are train/val/test leakage
  - conflicting labels: the same or a near-identical image under two classes
  - likely label errors (doctor_labels: out-of-fold probabilities and confident learning)
The report is a JSON-ready dict; `findings(report)` counts each kind of problem for --fail-on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from imgcls.doctor.embed import embed_files, load_feature_net
from imgcls.doctor.labels import MAX_IMAGES, PRETRAINED, THUMBNAILS, find_label_errors
from imgcls.doctor.near import NearPair, NearThresholds, near_duplicate_pairs
from imgcls.doctor.scan import FileRecord, dataset_splits, list_dataset, scan_files
from imgcls.errors import ConfigError, DataError
from imgcls.extras import require

log = logging.getLogger("imgcls")

SMALL_SIDE = 16  # images smaller than this on either side are listed as tiny
IMBALANCE_RATIO = 10  # a split whose largest class is this many times its smallest is a finding
DEFAULT_NEAR = NearThresholds()
KINDS = ("corrupt", "duplicate", "near-duplicate", "leakage", "conflict", "label-error", "imbalance", "tiny")


def parse_kinds(text: str) -> tuple[str, ...]:
    """'leakage,corrupt' -> ('leakage', 'corrupt'); 'all' -> every kind; unknown names are an error."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if kinds == ("all",):
        return KINDS
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"--fail-on: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)} or 'all'.")
    return kinds


def check_dataset(
    data: str | Path,
    *,
    max_pixels: int = 64_000_000,
    workers: int | None = None,
    near: NearThresholds | None = DEFAULT_NEAR,
    label_errors: bool = True,
    max_label_images: int = MAX_IMAGES,
    seed: int = 0,
    allow_outside: bool = False,
    pretrained: str | None = None,
    model: str | None = None,
) -> dict:
    """A JSON-ready report of what is in a dataset and what is wrong with it.

    near=None skips near-duplicates; label_errors=False skips the label model (the slow part).
    pretrained (a timm tag, `imagenet`, or a weights file, for the network `model`) makes the
    label model a logistic regression on that network's features instead of thumbnails.
    """
    require("imagehash", "doctor")  # before minutes of scanning, not in the middle of them
    net = None
    if label_errors:
        require("cleanlab", "doctor")
        if pretrained:  # fetched and loaded now: missing weights stop the run before the scan
            net = load_feature_net(pretrained, model)
    root = Path(data)
    timings = {}
    start = time.perf_counter()
    items = list_dataset(root, allow_outside=allow_outside)
    if not items:  # nothing checked is not "no problems found"
        raise DataError(f"{root} holds no images in class folders; give a folder with one sub-folder per class.")
    records = scan_files(items, max_pixels=max_pixels, workers=workers)
    timings["scan"] = time.perf_counter() - start
    readable = [r for r in records if r.error is None]
    report = {
        "data": str(root),
        "split_folders": {split: str(folder) for split, folder in dataset_splits(root).items()},
        "files": len(records),
        "splits": _inventory(readable),
        "unreadable": [
            {"path": r.path, "split": r.split, "label": r.label, "reason": r.error} for r in records if r.error
        ],
        "tiny_images": [r.path for r in readable if min(r.height, r.width) < SMALL_SIDE],
        "exif_rotated": [r.path for r in readable if r.exif_rotated],
        "channels": dict(Counter("grey" if r.channels == 1 else "colour" for r in readable)),
    }
    report.update(_exact_duplicates(readable))

    start = time.perf_counter()
    pairs, search = [], {}
    if near is not None and len(readable) > 1:
        found = near_duplicate_pairs(
            np.array([r.phash for r in readable], dtype=np.uint64),
            np.array([r.dhash for r in readable], dtype=np.uint64),
            np.stack([r.thumb for r in readable]),
            near,
            workers=workers,
            stats=search,
        )
        # Identical files are already exact duplicates; a near pair is a different file.
        pairs = [p for p in found if readable[p.i].sha256 != readable[p.j].sha256]
    timings["near_duplicates"] = time.perf_counter() - start
    report.update(_near_duplicates(readable, pairs))
    report["near_duplicate_search"] = search
    report["thresholds"] = {
        "near_duplicates": asdict(near) if near is not None else None,
        "tiny_side": SMALL_SIDE,
        "imbalance_ratio": IMBALANCE_RATIO,
    }

    start = time.perf_counter()
    report["label_errors"] = {
        "checked": 0,
        "judged": False,
        "issues": [],
        "skipped_reason": "not run (label_errors=False)",
    }
    if label_errors and readable:
        if net is None:
            features, classifier = np.stack([r.features for r in readable]), THUMBNAILS
        else:

            def features(rows):
                return embed_files(net, [readable[k].path for k in rows], max_pixels=max_pixels)

            classifier = PRETRAINED
        found = find_label_errors(
            features, [r.label for r in readable], classifier=classifier, max_images=max_label_images, seed=seed
        )
        if net is not None:
            found["features"] = net.describe()
        for issue in found["issues"]:
            r = readable[issue.pop("index")]
            issue.update(path=r.path, split=r.split, label=r.label)
        report["label_errors"] = found
    timings["label_errors"] = time.perf_counter() - start
    report["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    report["findings"] = findings(report)
    return report


def _inventory(readable: list[FileRecord]) -> dict:
    """Per split: image count, class counts and imbalance, then per class the sizes, modes and formats."""
    by_split: dict[str, dict[str, list[FileRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in readable:
        by_split[r.split][r.label].append(r)
    out = {}
    for split, classes in by_split.items():
        counts = {name: len(items) for name, items in sorted(classes.items())}
        out[split] = {
            "images": sum(counts.values()),
            "classes": counts,
            "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 2),
            **_describe([r for items in classes.values() for r in items]),
            "by_class": {name: _describe(items) for name, items in sorted(classes.items())},
        }
    return out


def _describe(items: list[FileRecord]) -> dict:
    widths = np.array([r.width for r in items])
    heights = np.array([r.height for r in items])
    return {
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        "modes": dict(Counter(r.mode for r in items).most_common()),
        "formats": dict(Counter(r.format for r in items).most_common()),
        "grey": sum(r.channels == 1 for r in items),
        "colour": sum(r.channels != 1 for r in items),
        "tiny": sum(min(r.width, r.height) < SMALL_SIDE for r in items),
        "exif_rotated": sum(r.exif_rotated for r in items),
    }


def _ref(r: FileRecord) -> dict:
    return {"path": r.path, "split": r.split, "label": r.label}


def _exact_duplicates(readable: list[FileRecord]) -> dict:
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for r in readable:
        by_hash[r.sha256].append(r)
    groups = [[_ref(r) for r in g] for g in by_hash.values() if len(g) > 1]
    return {
        "exact_duplicates": groups,
        "leakage": [g for g in groups if len({r["split"] for r in g}) > 1],
        "conflicting_labels": [g for g in groups if len({r["label"] for r in g}) > 1],
    }


def _near_pair(readable: list[FileRecord], p: NearPair) -> dict:
    item = {"a": _ref(readable[p.i]), "b": _ref(readable[p.j]), "phash": p.phash, "dhash": p.dhash, "pixels": p.pixels}
    if p.crop is not None:  # one is a slightly cropped copy of the other
        item["cropped"] = {
            "from": "a" if p.original == p.i else "b",  # the image the other was cut from
            "percent": dict(zip(("left", "top", "right", "bottom"), p.crop, strict=True)),
            "aligned": p.aligned,  # RMS difference once aligned (16x16 cells, 0-1)
        }
    return item


def _near_duplicates(readable: list[FileRecord], pairs: list[NearPair]) -> dict:
    items = [_near_pair(readable, p) for p in pairs]
    across = [p for p in items if p["a"]["split"] != p["b"]["split"]]
    between: Counter = Counter()
    for p in across:
        between["/".join(sorted((p["a"]["split"], p["b"]["split"])))] += 1
    return {
        "near_duplicates": items,
        "near_leakage": across,
        "near_leakage_counts": dict(between),
        "near_conflicts": [p for p in items if p["a"]["label"] != p["b"]["label"]],
    }


def findings(report: dict) -> dict[str, int]:
    """How many of each kind of problem the report holds (the kinds --fail-on names)."""
    imbalanced = [s for s, info in report["splits"].items() if info["imbalance_ratio"] >= IMBALANCE_RATIO]
    return {
        "corrupt": len(report["unreadable"]),
        "duplicate": len(report["exact_duplicates"]),
        "near-duplicate": len(report["near_duplicates"]),
        "leakage": len(report["leakage"]) + len(report["near_leakage"]),
        "conflict": len(report["conflicting_labels"]) + len(report["near_conflicts"]),
        "label-error": len(report["label_errors"]["issues"]),
        "imbalance": len(imbalanced),
        "tiny": len(report["tiny_images"]),
    }


def problems(report: dict) -> list[str]:
    """One line per kind of problem found, for people."""
    lines = []
    if report["unreadable"]:
        lines.append(f"{len(report['unreadable'])} unreadable file(s)")
    if report["exact_duplicates"]:
        lines.append(f"{len(report['exact_duplicates'])} group(s) of identical files")
    if report["near_duplicates"]:
        cropped = sum("cropped" in p for p in report["near_duplicates"])
        note = f" ({cropped} where one is a slightly cropped copy of the other)" if cropped else ""
        lines.append(f"{len(report['near_duplicates'])} near-duplicate pair(s){note}")
    if report["leakage"]:
        lines.append(f"{len(report['leakage'])} identical file group(s) shared between splits (leakage)")
    if report["near_leakage"]:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(report["near_leakage_counts"].items()))
        lines.append(f"{len(report['near_leakage'])} near-duplicate pair(s) across splits (leakage: {counts})")
    if report["conflicting_labels"]:
        lines.append(f"{len(report['conflicting_labels'])} identical file group(s) under different classes")
    if report["near_conflicts"]:
        lines.append(f"{len(report['near_conflicts'])} near-duplicate pair(s) under different classes")
    labels = report["label_errors"]
    if labels["issues"]:
        lines.append(f"{len(labels['issues'])} likely label error(s) among {labels['checked']:,} images checked")
    for split, info in report["splits"].items():
        if info["imbalance_ratio"] >= IMBALANCE_RATIO:
            lines.append(f"{split}: largest class is {info['imbalance_ratio']}x the smallest")
    return lines


def label_model_line(labels: dict) -> str:
    """What judged the labels and how good it was: 'logistic regression on tf_efficientnet_lite0
    features, out-of-fold accuracy 74% (largest class 14%) over 189 images'."""
    features = labels.get("features")
    model = (
        f"logistic regression on {features['architecture']} features"
        if features
        else "small network on 16x16 thumbnails"
    )
    return (
        f"{model}, out-of-fold accuracy {labels['accuracy']:.0%} (largest class {labels['majority_rate']:.0%}) "
        f"over {labels['checked']:,} images"
    )


def summary_lines(report: dict, *, examples: int = 10) -> list[str]:
    """The readable summary `imgcls data check` prints: inventory, then each problem with a few examples."""
    lines = [f"{report['data']}: {report['files']:,} image file(s)"]
    for split, info in report["splits"].items():
        classes = ", ".join(f"{name} {n:,}" for name, n in info["classes"].items())
        lines.append(f"  {split}: {info['images']:,} readable in {len(info['classes'])} classes ({classes})")
        sizes = f"{info['width']['min']}-{info['width']['max']} x {info['height']['min']}-{info['height']['max']} px"
        modes = ", ".join(f"{m} {n:,}" for m, n in info["modes"].items())
        formats = ", ".join(f"{m} {n:,}" for m, n in info["formats"].items())
        lines.append(
            f"    imbalance {info['imbalance_ratio']}x; sizes {sizes}; modes {modes}; formats {formats}; "
            f"grey {info['grey']:,} / colour {info['colour']:,}; tiny {info['tiny']}; "
            f"EXIF-rotated {info['exif_rotated']}"
        )
    found = problems(report)
    lines += [f"  problem: {line}" for line in found]
    for item in report["unreadable"][:examples]:
        lines.append(f"    unreadable {item['path']}: {item['reason']}")
    for group in report["leakage"][:examples]:
        lines.append("    leak: " + " = ".join(f"{r['split']}/{r['label']}: {r['path']}" for r in group))
    for group in report["conflicting_labels"][:examples]:
        lines.append("    conflict: " + " = ".join(f"{r['split']}/{r['label']}: {r['path']}" for r in group))
    for kind, pairs in (("near leak", report["near_leakage"]), ("near conflict", report["near_conflicts"])):
        for p in pairs[:examples]:
            a, b = p["a"], p["b"]
            crop = " (cropped)" if "cropped" in p else ""
            lines.append(
                f"    {kind}: {a['split']}/{a['label']}: {a['path']} ~ {b['split']}/{b['label']}: {b['path']}{crop}"
            )
    for issue in report["label_errors"]["issues"][:examples]:
        lines.append(
            f"    label? {issue['path']}: given {issue['given']} ({issue['given_probability']:.2f}), "
            f"suggested {issue['suggested']} ({issue['suggested_probability']:.2f})"
        )
    if report.get("near_duplicate_search", {}).get("crop_skipped"):
        lines.append(f"  near-duplicates: {report['near_duplicate_search']['crop_skipped']}")
    if report["label_errors"].get("accuracy") is not None:
        lines.append(f"  label model: {label_model_line(report['label_errors'])}")
    if report["label_errors"].get("skipped_reason"):
        lines.append(f"  label errors: {report['label_errors']['skipped_reason']}")
    if not found:
        lines.append("  no problems found")
    return lines
