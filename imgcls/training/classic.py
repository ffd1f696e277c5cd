"""Training the classic baseline (hand-made features + a scikit-learn classifier) through the
same run directory, checkpoint format, metrics and report as the neural models."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls import checkpoint as ckpt
from imgcls import files
from imgcls.config import Config
from imgcls.data.cache import ImageCache
from imgcls.data.preprocess import Preprocessing, channel_stats
from imgcls.data.resolve import resolve_training_data
from imgcls.metrics import classification_metrics
from imgcls.models.classic import fit_classic
from imgcls.training.run import decode_sources

log = logging.getLogger(__name__)


@dataclass
class ClassicRun:
    metrics: dict
    history: list[dict]
    summary: dict
    train: ImageCache
    val: ImageCache
    val_probs: np.ndarray


def fit_classic_run(config: Config, run_dir: Path) -> ClassicRun:
    """Fit once on the training images, save the checkpoints and metrics.json."""
    data, tc = config.data, config.train
    started = time.perf_counter()
    sources = resolve_training_data(data.train, data.val, val_fraction=data.val_fraction, seed=tc.seed)
    train, val = decode_sources(config.data, config.augment, sources)
    mean, std = channel_stats(train.images)
    pre = Preprocessing(data.img_size, train.channels, mean, std, data.resize, data.max_pixels)
    model = fit_classic(
        config.model.name, train.images, train.labels, len(sources.classes), seed=tc.seed, **config.model.kwargs
    )
    seconds = time.perf_counter() - started
    train_probs = model.predict_proba(train.images)
    val_probs = model.predict_proba(val.images)
    metrics = classification_metrics(val.labels, val_probs, sources.classes, train.skipped + val.skipped)
    history = [
        {
            "epoch": 1,
            "train_loss": _log_loss(train.labels, train_probs),
            "train_acc": _accuracy(train.labels, train_probs),
            "val_loss": round(metrics["log_loss"], 6),
            "val_acc": round(metrics["accuracy"], 6),
            "lr": 0.0,
            "seconds": round(seconds, 3),
        }
    ]
    meta = {
        "task": "single-label",
        "model": {"name": config.model.name, "kwargs": model.kwargs},
        "classes": list(sources.classes),
        "preprocess": pre.to_dict(),
        "training": {"epoch": 1, "val_accuracy": metrics["accuracy"]},
    }
    tensors = model.to_tensors()
    for name in ("best.safetensors", "last.safetensors"):
        ckpt.save_checkpoint(run_dir / name, tensors, meta)
    files.write_json(run_dir / "metrics.json", metrics)
    log.info("%s fitted in %.1f s: val accuracy %.4f", config.model.name, seconds, metrics["accuracy"])
    summary = {
        "model": config.model.name,
        "data": sources.layout,
        "classes": len(sources.classes),
        "train images": len(train),
        "val images": len(val),
        "fit seconds": round(seconds, 1),
    }
    return ClassicRun(metrics, history, summary, train, val, val_probs)


def _accuracy(labels, probs) -> float:
    return round(float((probs.argmax(1) == labels).mean()), 6)


def _log_loss(labels, probs) -> float:
    import numpy as np

    return round(float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()), 6)
