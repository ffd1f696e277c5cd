"""Tar shards in the WebDataset layout: a dataset packed into a few large files that copy,
stream and spread over machines better than 70,000 small ones.

`imgcls data shard DATA --out SHARDS` writes SPLIT-00000.tar, SPLIT-00001.tar, ... of about
`--shard-size` bytes each. A sample is two members sharing a key: KEY.png (or .jpg ...: the
original bytes, never re-encoded) and KEY.cls (the class index as text), as WebDataset
readers expect. SHARDS/index.json holds the classes, counts and each shard's members, so
imgcls plans a run without opening the tars.

Training reads SHARDS/ like a data root: a shard member's path is SHARD.tar/MEMBER, and the
decode cache reads it out of its tar (each worker process keeps its shards open), so shards
feed the same decode-once cache, in memory or on disk, as class folders do.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

from imgcls.data.reader import DEFAULT_MAX_FILE_MB, MB, read_image_file
from imgcls.data.sources import (
    DataSources,
    check_training_classes,
    find_split_folders,
    labelled_samples,
    scan_class_folders,
    stratified_split,
)
from imgcls.errors import DataError
from imgcls.progress import progress

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = "imgcls-shards/1"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as 500MB, 1.5GB, 100kB or 4096."""
    match = _SIZE.match(text)
    if not match:
        raise DataError(f"{text!r} is not a size; write it like 500MB or 2GB.")
    number, unit = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024**power)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same data gives the same shard, byte for byte
    tar.addfile(info, io.BytesIO(data))


def _split_folders(root: Path) -> dict[str, Path]:
    layout = find_split_folders(root)
    if layout is None:
        return {"train": root}
    return {name: folder for name, folder in layout.items() if folder is not None}


def write_shards(
    data: str | Path,
    out: str | Path,
    shard_bytes: int = 500 * 2**20,
    *,
    allow_outside: bool = False,
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
) -> dict:
    """Pack a class-folder dataset (one folder or a train/val/test root) into tar shards.
    Files that cannot be read (not regular files, over max_bytes) are skipped with a warning."""
    root, out = Path(data), Path(out)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of class folders.")
    if (out / INDEX).exists():
        raise DataError(f"{out} already holds shards; choose another --out.")
    splits = {
        name: scan_class_folders(folder, within=root, allow_outside=allow_outside)
        for name, folder in _split_folders(root).items()
    }
    check_training_classes(splits["train"], root)
    classes = list(splits["train"])
    index = {"format": FORMAT, "classes": classes, "splits": {}}
    out.mkdir(parents=True, exist_ok=True)
    for split, by_class in splits.items():
        unknown = [name for name in by_class if name not in classes]
        if unknown:
            raise DataError(f"{split}/ has class folder(s) {unknown} that train/ does not have.")
        items = [(classes.index(name), path) for name, paths in by_class.items() for path in paths]
        index["splits"][split] = _write_split(out, split, items, shard_bytes, max_bytes)
    (out / INDEX).write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    return index


def _write_split(out: Path, split: str, items: list[tuple[int, Path]], shard_bytes: int, max_bytes: int) -> dict:
    shards: list[dict] = []
    tar, size, members = None, 0, []

    def close() -> None:
        if tar is not None:
            tar.close()
            os.replace(out / f"{shards[-1]['file']}.tmp", out / shards[-1]["file"])
            shards[-1]["members"] = members

    try:
        for key, (label, path) in enumerate(progress(items, desc=f"shard {split}", unit="img")):
            try:
                # An empty file is packed as it is: decoding skips it, as it skips a broken one.
                data = read_image_file(path, max_bytes=max_bytes, allow_empty=True)
            except DataError as err:
                log.warning("skipped %s", err)
                continue
            if tar is None or size + len(data) > shard_bytes:
                close()
                shards.append({"file": f"{split}-{len(shards):05d}.tar"})
                tar, size, members = tarfile.open(out / f"{shards[-1]['file']}.tmp", "w"), 0, []
            name = f"{key:08d}{path.suffix.lower()}"
            _add(tar, name, data)
            _add(tar, f"{key:08d}.cls", str(label).encode())
            members.append([name, label])
            size += len(data) + 2048  # two tar headers of 512 bytes and padding
        close()
    except BaseException:
        if tar is not None:  # a failed or interrupted run leaves no half-written shard behind
            tar.close()
            (out / f"{shards[-1]['file']}.tmp").unlink(missing_ok=True)
        raise
    counts: dict[int, int] = {}
    for _, label in (m for s in shards for m in s["members"]):
        counts[label] = counts.get(label, 0) + 1
    count = sum(counts.values())
    return {"shards": shards, "count": count, "per_class": counts}


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


def read_index(root: Path) -> dict:
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{root / INDEX}: not a readable shard index ({err}).") from None
    if index.get("format") != FORMAT:
        raise DataError(f"{root / INDEX}: format {index.get('format')!r}; this imgcls reads {FORMAT}.")
    return index


def _by_class(root: Path, index: dict, split: str) -> dict[str, list[Path]]:
    classes = index["classes"]
    by_class: dict[str, list[Path]] = {name: [] for name in classes}
    for shard in index["splits"][split]["shards"]:
        for member, label in shard["members"]:
            by_class[classes[label]].append(root / shard["file"] / member)
    return {name: paths for name, paths in by_class.items() if paths}


def shard_sources(root: Path, val: str | Path | None, *, val_fraction: float, seed: int) -> DataSources:
    """Training sources from shards: their train/val(/test) splits, or train split automatically."""
    root = Path(root)
    index = read_index(root)
    splits = index["splits"]
    classes = tuple(index["classes"])
    train_by_class = _by_class(root, index, "train")
    if val is not None:
        val_by_class, val_root = scan_class_folders(Path(val)), Path(val)
        layout = f"shards {root} (train), validation {val}"
    elif "val" in splits:
        val_by_class, val_root, layout = _by_class(root, index, "val"), root, f"shards {root} (train, val)"
    else:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
        val_root, layout = root, f"shards {root} split {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
    test = labelled_samples(_by_class(root, index, "test"), classes, root) if "test" in splits else None
    return DataSources(
        classes,
        labelled_samples(train_by_class, classes, root),
        labelled_samples(val_by_class, classes, val_root),
        test,
        layout,
    )


def shard_member(path: str | Path) -> tuple[Path, str] | None:
    """(shard file, member name) when path points inside a .tar shard, else None."""
    path = Path(path)
    if path.parent.suffix == ".tar" and path.parent.is_file():
        return path.parent, path.name
    return None


@functools.lru_cache(maxsize=8)
def _open_shard(shard: str) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
    # One open TarFile per shard and process: its member table is read once, then each image
    # is a seek and a read.
    tar = tarfile.open(shard, "r")
    return tar, {m.name: m for m in tar.getmembers()}


def read_member(shard: Path, member: str, max_bytes: int = DEFAULT_MAX_FILE_MB * MB) -> bytes:
    tar, members = _open_shard(str(shard))
    info = members.get(member)
    if info is None:
        raise DataError(f"{shard}: no member {member!r}; the shard and its index.json disagree.")
    if info.size > max_bytes:
        raise DataError(
            f"{shard}/{member}: {info.size / MB:,.1f} MB is over the limit of {max_bytes / MB:,.0f} MB "
            "per image file (data.max_file_mb)."
        )
    handle = tar.extractfile(info)
    if handle is None:
        raise DataError(f"{shard}: member {member!r} is not a file.")
    return handle.read()


def read_source(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_MB * MB) -> Path | bytes:
    """What to decode for a sample's path: the file itself, or its bytes out of a shard."""
    inside = shard_member(path)
    if inside is None:
        return Path(path)
    try:
        return read_member(*inside, max_bytes)
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"{path}: cannot read it out of its shard ({err}).") from None


def shard_evaluation_samples(root: Path, classes: tuple[str, ...]):
    """The samples `evaluate` uses from shards: the test split, else val, else train."""
    index = read_index(Path(root))
    split = next(name for name in ("test", "val", "train") if name in index["splits"])
    return labelled_samples(_by_class(Path(root), index, split), classes, Path(root)), Path(root) / split
