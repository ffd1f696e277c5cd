"""Evaluate a checkpoint (or an exported ONNX model) on a labelled folder: metrics.json,
predictions.npz, summary.json and report.html."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from imgcls.data.cache import build_cache
from imgcls.data.resolve import resolve_evaluation_data
from imgcls.files import write_json
from imgcls.inference.predictor import Predictor
from imgcls.metrics import classification_metrics, multilabel_metrics

SUMMARY_FILE = "summary.json"


def flip_tta_probabilities(
    predictor: Predictor, images: np.ndarray, probs: np.ndarray, batch_size: int | None
) -> np.ndarray:
    """Mean of the images' probabilities `probs` and their mirror images': test-time augmentation
    that works for every runtime (PyTorch, ONNX Runtime, the classic baseline), as it only flips
    pixels."""
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    return (probs + predictor.probabilities(mirrored, batch_size)) / 2


def task_metrics(predictor: Predictor, labels: np.ndarray, probs: np.ndarray, skipped: list[dict]) -> dict:
    """classification_metrics, or for a multi-label model the multi-label metrics at the
    thresholds stored in its checkpoint."""
    if predictor.multilabel:
        stored = predictor.metadata.get("thresholds") or {}
        thresholds = predictor.thresholds()
        return multilabel_metrics(labels, probs, predictor.classes, thresholds, stored.get("default", 0.5), skipped)
    return classification_metrics(labels, probs, predictor.classes, skipped)


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    out_dir: Path | None = None,
    *,
    batch_size: int | None = None,
    tta: bool = False,
    allow_outside: bool = False,
    runtime: str = "torch",
) -> dict:
    """Metrics of a model on DATA's test/ (else val/, else all of it); written to out_dir.

    With tta, the metrics are those of flip test-time augmentation, and metrics["tta"] gives
    accuracy and macro-F1 without and with it."""
    started = time.perf_counter()
    predictor = Predictor.from_file(checkpoint, runtime=runtime)
    samples, folder = resolve_evaluation_data(
        data, predictor.classes, multilabel=predictor.multilabel, allow_outside=allow_outside
    )
    pre = predictor.preprocessing
    cache = build_cache(
        samples, size=pre.img_size, resize=pre.resize, channels=pre.channels, max_pixels=pre.max_pixels, desc="decode"
    )
    images = np.asarray(cache.images)
    probs = predictor.probabilities(images, batch_size=batch_size)
    metrics = task_metrics(predictor, cache.labels, probs, cache.skipped)
    if tta:
        plain = metrics
        probs = flip_tta_probabilities(predictor, images, probs, batch_size)
        metrics = task_metrics(predictor, cache.labels, probs, cache.skipped)
        key = "mAP" if predictor.multilabel else "accuracy"
        metrics["tta"] = {
            "transforms": ["identity", "horizontal flip"],
            f"{key}_without": plain[key],
            f"{key}_with": metrics[key],
            "macro_f1_without": plain["macro_f1"],
            "macro_f1_with": metrics["macro_f1"],
        }
    metrics["data"] = str(folder)
    if out_dir is not None:
        from imgcls.report import Predictions, save_predictions, write_report

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "metrics.json", metrics)
        labels = np.asarray(cache.labels)  # (N,) classes, or (N, K) 0/1 targets for multi-label
        predictions = Predictions(labels, probs.astype(np.float32), tuple(cache.paths))
        save_predictions(out_dir, predictions)
        summary = {
            "checkpoint": str(checkpoint),
            "data": str(folder),
            "model": predictor.metadata["model"]["name"],
            "runtime": predictor.runtime,
            "test-time augmentation": "horizontal flip" if tta else ("flip (model)" if pre.test_flip else "none"),
            "evaluation seconds": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(),
        }
        write_json(out_dir / SUMMARY_FILE, summary)
        torch_checkpoint = None if str(checkpoint).lower().endswith(".onnx") else Path(checkpoint)
        write_report(
            out_dir / "report.html",
            metrics=metrics,
            summary=summary,
            predictions=predictions,
            checkpoint=torch_checkpoint,
        )
    return metrics
