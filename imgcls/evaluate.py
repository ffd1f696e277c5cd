"""Evaluate a checkpoint on a labelled folder: metrics.json and a report."""

from __future__ import annotations

from pathlib import Path

import torch

from imgcls.checkpoint import write_json
from imgcls.data.cache import build_cache
from imgcls.data.sources import resolve_evaluation_data
from imgcls.metrics import classification_metrics
from imgcls.predict import Predictor


def evaluate_checkpoint(
    checkpoint: Path, data: Path, out_dir: Path | None = None, *, batch_size: int | None = None
) -> dict:
    """Metrics of a checkpoint on DATA's test/ (else val/, else all of it); written to out_dir."""
    predictor = Predictor.from_file(checkpoint)
    samples, folder = resolve_evaluation_data(data, predictor.classes)
    pre = predictor.preprocessing
    cache = build_cache(
        samples, size=pre.img_size, resize=pre.resize, channels=pre.channels, max_pixels=pre.max_pixels, desc="decode"
    )
    probs = predictor.probabilities(cache.images, batch_size=batch_size)
    metrics = classification_metrics(cache.labels, probs, predictor.classes, cache.skipped)
    metrics["data"] = str(folder)
    if out_dir is not None:
        from imgcls.report import write_report

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "metrics.json", metrics)
        summary = {
            "checkpoint": str(checkpoint),
            "data": str(folder),
            "model": predictor.metadata["model"]["name"],
            "images": len(cache),
            "threads": torch.get_num_threads(),
        }
        write_report(out_dir / "report.html", metrics=metrics, summary=summary)
    return metrics
