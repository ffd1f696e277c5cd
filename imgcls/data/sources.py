"""Where images and labels are: class folders, train/val/test layouts, automatic splits.

A class is a folder; its name (any Unicode, normalised to NFC so the same name typed on
macOS and Linux matches) is the label. Hidden files and folders and non-image files are
ignored. Every problem a user can fix is reported here, before any decoding or training.
"""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from imgcls.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
IGNORED_FOLDERS = frozenset({"__MACOSX", "__pycache__"})
VAL_FOLDER_NAMES = ("val", "validation")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # the class index; -1 for multi-label samples, whose classes are in targets
    targets: tuple[int, ...] | None = None  # multi-label: 0/1 per class (a multi-hot vector)


@dataclass(frozen=True)
class DataSources:
    """The labelled images of one run, split into train and val (and maybe test)."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...] | None
    layout: str  # how the split was made, said in the log and the report
    task: str = "single-label"  # or "multi-label" (from a manifest)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not _ignored(path.name)


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def list_images(
    folder: Path,
    *,
    within: Path | None = None,
    allow_outside: bool = False,
    skipped: list[tuple[Path, str]] | None = None,
) -> list[Path]:
    """Image files under folder, recursively, sorted; symlinked folders followed once.

    Links are followed only while they stay inside `within` (default: folder itself) once
    resolved, unless allow_outside: a dataset from elsewhere could otherwise make imgcls read
    the whole machine (a link to /). What is left out is appended to `skipped` with the reason.
    """
    skipped = skipped if skipped is not None else []
    root_real = os.path.realpath(within if within is not None else folder)
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_log_walk_error):
        real = os.path.realpath(dirpath)
        reason = _folder_refused(real, root_real, seen_dirs, allow_outside)
        if reason:
            skipped.append((Path(dirpath), reason))
            dirnames.clear()
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for name in filenames:
            path = Path(dirpath, name)
            if not is_image_file(path):
                continue
            if not allow_outside and path.is_symlink() and not _inside(os.path.realpath(path), root_real):
                skipped.append((path, f"a link to {os.path.realpath(path)}, outside {root_real}"))
                continue
            found.append(path)
    return sorted(found)


def _folder_refused(real: str, root_real: str, seen: set[str], allow_outside: bool) -> str | None:
    if real in seen:
        return "a link to a folder already scanned (a symlink loop, or a second link to it)"
    if not allow_outside and not _inside(real, root_real):
        return f"a link to {real}, outside {root_real}"
    return None


def log_skipped(skipped: list[tuple[Path, str]], root: Path, listed: int = 10) -> None:
    """Name what a scan left out, with the reasons (the first `listed`, then a count)."""
    if not skipped:
        return
    outside = any("outside" in reason for _, reason in skipped)
    hint = " (pass --allow-outside to follow links that leave the dataset)" if outside else ""
    log.warning("%s: %d entr%s skipped%s:", root, len(skipped), "y" if len(skipped) == 1 else "ies", hint)
    for path, reason in skipped[:listed]:
        log.warning("  skipped %s: %s", path, reason)
    if len(skipped) > listed:
        log.warning("  and %d more", len(skipped) - listed)


def _log_walk_error(err: OSError) -> None:
    log.warning("cannot list %s: %s (skipped)", err.filename, err.strerror)


def _children(folder: Path) -> list[Path]:
    """The entries of a folder, sorted; a folder that cannot be listed is a DataError."""
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}. Check that it exists and is readable.") from None


def _is_folder(path: Path, *, listed: bool = True) -> bool:
    """is_dir that says False, with a warning instead of an exception, for entries that
    vanished since their folder was `listed` or cannot be looked at (no permission, loops)."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        if listed and not path.is_symlink():  # a dangling link is just not a folder
            log.warning("%s disappeared while the data was scanned (skipped)", path)
        return False
    except OSError as err:
        log.warning("cannot look at %s: %s (skipped)", path, err.strerror)
        return False


MAX_NAME_BYTES = 255  # the longest file name ext4, APFS and NTFS take


def unsafe_name_reason(name: object) -> str | None:
    """Why `name` cannot be a class name, or None. Class names become folder names (`predict
    --copy-to`, `data apply`), so one must be a single, printable path component on every system."""
    if not isinstance(name, str):
        return f"{type(name).__name__} is not text"
    if name.strip() in ("", ".", ".."):
        return "empty, '.' or '..'"
    if "/" in name or "\\" in name:
        return "holds a path separator ('/' or '\\')"
    if any(unicodedata.category(c) == "Cc" for c in name):  # NUL, CR/LF, tab, ESC of terminal codes
        return "holds a control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def check_class_names(names, where: str) -> None:
    """DataError naming the first class name that is not a safe folder name."""
    for name in names:
        reason = unsafe_name_reason(name)
        if reason:
            raise DataError(f"{where}: class name {name!r} is refused: {reason}. Class names must be folder names.")


def class_name(folder: Path) -> str:
    """A folder's name as a class name: NFC, and bytes that are not UTF-8 written as %XX
    (Python keeps them as lone surrogates, which JSON, plots and HTML cannot show; a backslash
    escape would make the name a Windows path)."""
    name = folder.name
    if any("\udc80" <= c <= "\udcff" for c in name):
        name = "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in name)
        log.warning("class folder %r is not named in UTF-8: its class is called %r", folder.name, name)
    return unicodedata.normalize("NFC", name)


def scan_class_folders(root: Path, *, within: Path | None = None, allow_outside: bool = False) -> dict[str, list[Path]]:
    """{class name: image paths} for a folder holding one folder per class.

    Every image stays inside `within` (default: root) after resolving links, unless
    allow_outside; links that leave it, and loops, are skipped and named in a warning."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Give a folder with one sub-folder per class.")
    within = within if within is not None else root
    root_real = os.path.realpath(within)
    classes: dict[str, list[Path]] = {}
    skipped: list[tuple[Path, str]] = []
    for child in _children(root):
        if not _is_folder(child) or _ignored(child.name):
            continue
        real = os.path.realpath(child)
        if not allow_outside and not _inside(real, root_real):
            skipped.append((child, f"a link to {real}, outside {root_real}"))
            continue
        name = class_name(child)
        if name in classes:  # the same name spelt in NFC and NFD: one class, both folders
            log.warning("%s and another folder both spell class %r; their images are merged", child, name)
        found = list_images(child, within=within, allow_outside=allow_outside, skipped=skipped)
        classes[name] = sorted(classes.get(name, []) + found)
    log_skipped(skipped, root)
    return classes


def find_split_folders(root: Path) -> dict[str, Path | None] | None:
    """{train, val, test} folders when root uses the train/ val/ test/ layout, else None."""
    train = root / "train"
    # A class folder that happens to be named "train" holds images, not class folders.
    if not _is_folder(train, listed=False) or not any(_is_folder(c) and not _ignored(c.name) for c in _children(train)):
        return None
    val = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    test = root / "test" if (root / "test").is_dir() else None
    return {"train": train, "val": val, "test": test}


def check_training_classes(by_class: dict[str, list[Path]], root: Path) -> None:
    if len(by_class) < 2:
        found = ", ".join(by_class) or "none"
        raise DataError(
            f"{root} needs at least two class folders (found: {found}). "
            "Put each class's images in its own sub-folder, e.g. cats/ and dogs/."
        )
    check_class_names(by_class, str(root))
    empty = [name for name, paths in by_class.items() if not paths]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(repr(n) for n in empty)} in {root} hold no images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}). Add images or remove the folder."
        )


def labelled_samples(by_class: dict[str, list[Path]], classes: tuple[str, ...], root: Path) -> tuple[Sample, ...]:
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in by_class if name not in index]
    if unknown:
        raise DataError(
            f"{root} has class folder(s) {', '.join(repr(n) for n in unknown)} that the training "
            f"data does not have (training classes: {', '.join(classes)}). Rename or remove them."
        )
    return tuple(Sample(p, index[name]) for name, paths in by_class.items() for p in paths)


def stratified_split(
    by_class: dict[str, list[Path]], fraction: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Hold out `fraction` of every class (at least one image when a class has two or more)."""
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for name, paths in by_class.items():
        order = rng.permutation(len(paths))
        n_val = min(max(1, round(len(paths) * fraction)), len(paths) - 1) if len(paths) > 1 else 0
        val[name] = sorted(paths[i] for i in order[:n_val])
        train[name] = sorted(paths[i] for i in order[n_val:])
        if len(paths) == 1:
            log.warning("class %r has one image: it is used for training only", name)
    return train, val


def folder_sources(
    data: str | Path,
    val: str | Path | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    allow_outside: bool = False,
) -> DataSources:
    """The train/val(/test) sources of a folder of class folders, following the layout rules.
    Images stay inside the data folder (an explicit --val folder: inside that) after resolving links."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root} does not exist. Give a folder of class folders.")
    split = find_split_folders(root)
    train_root = split["train"] if split else root
    val_root = Path(val) if val is not None else (split["val"] if split else None)
    test_root = split["test"] if split else None
    scan = partial(scan_class_folders, within=root, allow_outside=allow_outside)

    train_by_class = scan(train_root)
    check_training_classes(train_by_class, train_root)
    if val_root is not None:
        if not val_root.is_dir():
            raise DataError(f"validation folder {val_root} does not exist.")
        val_by_class = scan_class_folders(val_root, allow_outside=allow_outside) if val else scan(val_root)
        layout = f"train {train_root}, validation {val_root}"
    else:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
        val_root = train_root
        layout = f"{train_root} split {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
    classes = tuple(train_by_class)
    val_samples = labelled_samples(val_by_class, classes, val_root)
    if not val_samples:
        raise DataError(f"no validation images found in {val_root}. Add images or a val/ folder.")
    test = labelled_samples(scan(test_root), classes, test_root) if test_root else None
    return DataSources(
        classes=classes,
        train=labelled_samples(train_by_class, classes, train_root),
        val=val_samples,
        test=test,
        layout=layout,
    )


def folder_evaluation_samples(
    data: str | Path, classes: tuple[str, ...], *, allow_outside: bool = False
) -> tuple[tuple[Sample, ...], Path]:
    """The images `evaluate` uses in a folder: test/ if present, else val/ (validation/), else all of it."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Give a folder of class folders (or a data root).")
    split = find_split_folders(root)
    folder = root
    if split is not None:
        folder = split["test"] or split["val"] or root
        if folder is root:
            raise DataError(f"{root} has train/ but neither test/ nor val/ to evaluate on.")
    by_class = scan_class_folders(folder, within=root, allow_outside=allow_outside)
    samples = labelled_samples(by_class, classes, folder)
    if not samples:
        raise DataError(f"{folder} holds no images in its class folders.")
    return samples, folder
