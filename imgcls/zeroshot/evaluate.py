"""Evaluate zero-shot CLIP on labelled class folders: the folder names are the labels.

Writes what `imgcls evaluate --out` writes (metrics.json, predictions.npz, summary.json,
report.html), so `imgcls report` and `imgcls compare` read it the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from imgcls.data.cache import build_cache
from imgcls.data.resolve import resolve_evaluation_data
from imgcls.data.sources import find_split_folders, scan_class_folders
from imgcls.errors import DataError
from imgcls.files import write_json
from imgcls.metrics import classification_metrics
from imgcls.models.clip_backbone import DEFAULT_CLIP_MODEL
from imgcls.zeroshot.classifier import DEFAULT_PROMPTS, zeroshot_predictor


def folder_labels(data: Path) -> tuple[str, ...]:
    """Class names of the folder `evaluate` would use: test/, else val/, else DATA itself."""
    data = Path(data)
    split = find_split_folders(data) if data.is_dir() else None
    folder = (split["test"] or split["val"] or data) if split else data
    classes = tuple(name for name, paths in scan_class_folders(folder).items() if paths)
    if len(classes) < 2:
        raise DataError(f"{folder} needs at least two class folders with images to evaluate zero-shot.")
    return classes


def evaluate_zeroshot(
    data: Path,
    out_dir: Path | None = None,
    *,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_weights: str | Path | None = None,
    prompts=DEFAULT_PROMPTS,
    batch_size: int = 64,
) -> dict:
    """metrics.json's dictionary of zero-shot CLIP on DATA's test/ (else val/, else all of it)."""
    started = time.perf_counter()
    classes = folder_labels(Path(data))
    predictor = zeroshot_predictor(classes, clip_model=clip_model, clip_weights=clip_weights, prompts=prompts)
    samples, folder = resolve_evaluation_data(data, classes)
    pre = predictor.preprocessing
    cache = build_cache(
        samples, size=pre.img_size, resize=pre.resize, channels=pre.channels, max_pixels=pre.max_pixels, desc="decode"
    )
    probs = predictor.probabilities(np.asarray(cache.images), batch_size=batch_size)
    metrics = classification_metrics(cache.labels, probs, classes, cache.skipped)
    metrics["data"] = str(folder)
    if out_dir is not None:
        _write_outputs(Path(out_dir), metrics, cache, probs, predictor, time.perf_counter() - started)
    return metrics


def _write_outputs(out_dir: Path, metrics: dict, cache, probs: np.ndarray, predictor, seconds: float) -> None:
    from imgcls.report import Predictions, save_predictions, write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    predictions = Predictions(np.asarray(cache.labels, dtype=np.int64), probs.astype(np.float32), tuple(cache.paths))
    save_predictions(out_dir, predictions)
    meta = predictor.metadata
    summary = {
        "model": meta["model"]["name"],
        "clip weights": meta["model"]["kwargs"]["clip_weights"],
        "prompts": len(meta["prompts"]),
        "data": metrics["data"],
        "runtime": "torch (zero-shot, no training)",
        "evaluation seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    write_json(out_dir / "summary.json", summary)
    # No checkpoint: Grad-CAM needs an imgcls model file, so the report leaves that section out.
    write_report(out_dir / "report.html", metrics=metrics, summary=summary, predictions=predictions)


def summary_lines(metrics: dict, out_dir: str | None) -> list[str]:
    """What `imgcls zeroshot evaluate` prints."""
    top5 = f"  top-5 {metrics['top5_accuracy']:.4f}" if metrics.get("top5_accuracy") is not None else ""
    lines = [
        f"{metrics['data']}: {metrics['num_samples']} images, {len(metrics['classes'])} labels (folder names)",
        f"zero-shot accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}{top5}",
    ]
    if metrics["skipped_files"]:
        lines.append(f"skipped {len(metrics['skipped_files'])} unreadable file(s)")
    if out_dir:
        lines.append(f"metrics: {Path(out_dir) / 'metrics.json'}\nreport: {Path(out_dir) / 'report.html'}")
    return lines
