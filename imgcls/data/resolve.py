"""Where a dataset's images and labels come from: a folder of class folders, a CSV/JSONL
manifest or a folder of shards. The one place that tells the three apart."""

from __future__ import annotations

from pathlib import Path

from imgcls.data.manifest import is_manifest, manifest_samples, manifest_sources, read_manifest
from imgcls.data.shards import is_shard_folder, shard_evaluation_samples, shard_sources
from imgcls.data.sources import DataSources, Sample, folder_evaluation_samples, folder_sources
from imgcls.errors import DataError


def resolve_training_data(
    data: str | Path,
    val: str | Path | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    task: str = "auto",
    allow_outside: bool = False,
) -> DataSources:
    """The train/val(/test) sources of a training run."""
    if is_manifest(data):
        return manifest_sources(data, val, val_fraction=val_fraction, seed=seed, task=task, allow_outside=allow_outside)
    if is_shard_folder(data):
        return shard_sources(Path(data), val, val_fraction=val_fraction, seed=seed)
    if task == "multi-label":
        raise DataError(f"{data}: multi-label training reads a manifest (CSV or JSONL), not class folders.")
    return folder_sources(data, val, val_fraction=val_fraction, seed=seed, allow_outside=allow_outside)


def resolve_evaluation_data(
    data: str | Path, classes: tuple[str, ...], *, multilabel: bool = False, allow_outside: bool = False
) -> tuple[tuple[Sample, ...], Path]:
    """The images `evaluate` uses: every row of a manifest or a shard folder's evaluation split,
    or a folder's test/ (else val/, else all of it)."""
    if is_manifest(data):
        rows = read_manifest(data, allow_outside=allow_outside)
        return manifest_samples(rows, classes, multilabel, data), Path(data)
    if is_shard_folder(data):
        return shard_evaluation_samples(Path(data), classes)
    return folder_evaluation_samples(data, classes, allow_outside=allow_outside)
