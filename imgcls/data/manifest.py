"""Manifests: a CSV or JSONL file that lists images and their labels, for multi-label data
(an image may hold several things, or none) and for users with a spreadsheet instead of
class folders.

CSV: a header with `path` and `labels` (or `label`); labels separated by ";". JSONL: one
object per line, {"path": ..., "labels": [...]} (or "label": "..."). Paths are relative to
the manifest's folder; one that leaves it (absolute, or through "..") is refused unless the
user allows it, so a manifest from elsewhere cannot make imgcls read any file on the machine.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.sources import DataSources, Sample, check_class_names
from imgcls.errors import DataError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl")
LABEL_SEPARATOR = ";"
MISSING_LISTED = 10  # missing files named in the warning; the rest are counted


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line of the file (the CSV header is line 1)
    path: Path
    labels: tuple[str, ...]  # empty: an image with none of the classes (a valid negative)


def is_manifest(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def _label(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _csv_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [(name or "").strip().lower() for name in reader.fieldnames or []]
        if "path" not in fields or not ({"labels", "label"} & set(fields)):
            raise DataError(f"{path}: a CSV manifest needs a header with 'path' and 'labels' columns; got {fields}.")
        reader.fieldnames = fields
        key = "labels" if "labels" in fields else "label"
        rows = []
        for row in reader:
            text = row.get(key) or ""
            rows.append((reader.line_num, (row.get("path") or "").strip(), text.split(LABEL_SEPARATOR)))
        return rows


def _jsonl_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except ValueError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err}).") from None
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise DataError(f'{path}, line {number}: expected {{"path": "...", "labels": [...]}}.')
            labels = item.get("labels", item.get("label", []))
            labels = [labels] if isinstance(labels, str) else labels
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise DataError(f"{path}, line {number}: labels must be a list of strings.")
            rows.append((number, item["path"], labels))
    return rows


def _inside(folder: Path, path: Path) -> bool:
    return os.path.commonpath([os.path.abspath(folder), os.path.abspath(path)]) == os.path.abspath(folder)


def read_manifest(manifest: str | Path, *, allow_outside: bool = False) -> list[ManifestRow]:
    """The rows of a manifest, checked: paths inside its folder, no conflicting duplicates.

    Missing files are kept (decoding skips and counts them like unreadable ones) and named
    here with their line numbers."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found.")
    try:
        raw = _jsonl_rows(manifest) if manifest.suffix.lower() == ".jsonl" else _csv_rows(manifest)
    except UnicodeDecodeError as err:
        raise DataError(f"{manifest}: not UTF-8 text ({err.reason}); save the manifest as UTF-8.") from None
    except csv.Error as err:  # a field over the csv module's limit (128 kB), a NUL on old Pythons
        raise DataError(f"{manifest}: not a readable CSV manifest ({err}).") from None
    except RecursionError:
        raise DataError(f"{manifest}: a JSON line nested too deeply to be a manifest row.") from None
    folder = manifest.parent
    rows: list[ManifestRow] = []
    first_seen: dict[str, ManifestRow] = {}
    missing = []
    for line, text, labels in raw:
        if not text:
            raise DataError(f"{manifest}, line {line}: empty path.")
        if "\0" in text:
            raise DataError(f"{manifest}, line {line}: the path holds a NUL byte; no file can be named so.")
        given = Path(text)
        path = Path(os.path.normpath(folder / given))
        if not allow_outside and (given.is_absolute() or not _inside(folder, path)):
            raise DataError(
                f"{manifest}, line {line}: {text!r} is outside the manifest's folder; move the images under "
                "it, or pass --allow-outside if you trust this manifest."
            )
        row = ManifestRow(line, path, tuple(sorted({_label(x) for x in labels if _label(x)})))
        check_class_names(row.labels, f"{manifest}, line {line}")
        earlier = first_seen.get(str(path))
        if earlier is not None:
            if earlier.labels != row.labels:
                raise DataError(
                    f"{manifest}: {text!r} is listed on line {earlier.line} as {list(earlier.labels)} and on line "
                    f"{line} as {list(row.labels)}; keep one row per image."
                )
            log.warning("%s, line %d: duplicate of line %d, ignored", manifest, line, earlier.line)
            continue
        first_seen[str(path)] = row
        if not path.is_file():
            missing.append(row)
        rows.append(row)
    if not rows:
        raise DataError(f"{manifest}: no rows. Add one row per image: path and its labels.")
    if missing:
        named = ", ".join(f"line {r.line}: {r.path.name}" for r in missing[:MISSING_LISTED])
        more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
        log.warning("%s: %d listed file(s) not found (%s%s); they are skipped", manifest, len(missing), named, more)
    return rows


def is_multilabel(rows: list[ManifestRow]) -> bool:
    """A manifest is multi-label when any image has no label or more than one."""
    return any(len(r.labels) != 1 for r in rows)


def manifest_classes(rows: list[ManifestRow]) -> tuple[str, ...]:
    return tuple(sorted({label for r in rows for label in r.labels}))


def manifest_samples(
    rows: list[ManifestRow], classes: tuple[str, ...], multilabel: bool, manifest: str | Path
) -> tuple[Sample, ...]:
    """Samples of manifest rows for the given classes; a label the classes lack is an error."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for r in rows for label in r.labels if label not in index})
    if unknown:
        raise DataError(
            f"{manifest}: label(s) {', '.join(map(repr, unknown))} are not among the model's classes "
            f"({', '.join(classes)})."
        )
    if not multilabel:
        wrong = [r for r in rows if len(r.labels) != 1]
        if wrong:
            raise DataError(
                f"{manifest}, line {wrong[0].line}: a single-label task needs exactly one label per row "
                f"(got {list(wrong[0].labels)})."
            )
        return tuple(Sample(r.path, index[r.labels[0]]) for r in rows)
    samples = []
    for r in rows:
        hot = [0] * len(classes)
        for label in r.labels:
            hot[index[label]] = 1
        samples.append(Sample(r.path, -1, tuple(hot)))
    return tuple(samples)


def _split_rows(rows: list[ManifestRow], fraction: float, seed: int) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Hold out `fraction` of the rows, in proportion within groups sharing a first label."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(r.labels[0] if r.labels else "", []).append(r)
    train, val = [], []
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        n_val = min(max(1, round(len(group) * fraction)), len(group) - 1) if len(group) > 1 else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return sorted(train, key=lambda r: r.line), sorted(val, key=lambda r: r.line)


def manifest_sources(
    manifest: str | Path,
    val: str | Path | None,
    *,
    val_fraction: float,
    seed: int,
    task: str = "auto",
    allow_outside: bool = False,
) -> DataSources:
    """Training sources from a manifest; validation from another manifest or a seeded split."""
    rows = read_manifest(manifest, allow_outside=allow_outside)
    val_rows = read_manifest(val, allow_outside=allow_outside) if val is not None else None
    multilabel = task == "multi-label" or (
        task == "auto" and (is_multilabel(rows) or (val_rows is not None and is_multilabel(val_rows)))
    )
    classes = manifest_classes(rows)
    if len(classes) < 2 and not multilabel:
        raise DataError(f"{manifest}: a classifier needs at least two labels; found {list(classes)}.")
    if not classes:
        raise DataError(f"{manifest}: no labels at all; add labels to the rows.")
    if val_rows is None:
        rows, val_rows = _split_rows(rows, val_fraction, seed)
        layout = f"manifest {manifest} split {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
    else:
        layout = f"manifest {manifest}, validation {val}"
    if not val_rows:
        raise DataError(f"{manifest}: too few rows to hold out a validation set; give --val.")
    return DataSources(
        classes=classes,
        train=manifest_samples(rows, classes, multilabel, manifest),
        val=manifest_samples(val_rows, classes, multilabel, val or manifest),
        test=None,
        layout=layout,
        task="multi-label" if multilabel else "single-label",
    )
