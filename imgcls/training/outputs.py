"""What a training run leaves besides its checkpoints: summary.json, predictions.npz and
report.html, so that `imgcls report RUN_DIR` can draw the same report again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls import files
from imgcls.config import Config
from imgcls.training.run import RunSetup, precision_name


def write_outputs(
    run_dir: Path, metrics: dict, history: list[dict], summary: dict, *, val=None, probs=None, train=None
) -> None:
    """summary.json, predictions.npz and report.html of a finished run."""
    from imgcls.report import Predictions, save_predictions, write_report  # the one step right of training

    classes = metrics["classes"]
    train_counts = None
    if train is not None:
        labels = np.asarray(train.labels)
        # Images per class; multi-label: images holding the label.
        counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
        train_counts = {name: int(n) for name, n in zip(classes, counts, strict=True)}
    files.write_json(run_dir / "summary.json", {**summary, "train_counts": train_counts})
    predictions = None
    if val is not None and probs is not None:
        probs = np.asarray(probs, dtype=np.float32)
        predictions = Predictions(np.asarray(val.labels, dtype=np.int64), probs, tuple(val.paths))
        save_predictions(run_dir, predictions)
    write_report(
        run_dir / "report.html",
        metrics=metrics,
        history=history,
        summary=summary,
        predictions=predictions,
        checkpoint=run_dir / "best.safetensors",
        train_counts=train_counts,
    )


def describe_recipe(config: Config) -> str:
    """The training choices that matter most, in one line (the full set is in config.yaml)."""
    o, t, a = config.optim, config.train, config.augment
    parts = [f"recipe {config.recipe}", f"{o.name} lr {o.lr:g}", f"{o.schedule} schedule", f"batch {t.batch_size}"]
    if o.weight_decay:
        parts.append(f"weight decay {o.weight_decay:g}")
    if t.label_smoothing:
        parts.append(f"label smoothing {t.label_smoothing:g}")
    if t.ema:
        parts.append(f"EMA {t.ema_decay:g}")
    augment = [
        name
        for name, on in (
            ("flip", a.hflip),
            ("vertical flip", a.vflip),
            (f"shift {a.translate:g}", a.translate),
            (f"random resized crop {a.random_resized_crop:g}", a.random_resized_crop),
            (f"rotation {a.rotation:g} deg", a.rotation),
            (f"shear {a.shear:g} deg", a.shear),
            (f"zoom {a.zoom:g}", a.zoom),
            (f"brightness {a.brightness:g}", a.brightness),
            (f"contrast {a.contrast:g}", a.contrast),
            (f"saturation {a.saturation:g}", a.saturation),
            (f"cutout {a.cutout:g}", a.cutout),
            (a.auto_augment, a.auto_augment != "none"),
            (f"random erasing {a.random_erasing:g}", a.random_erasing),
            (f"mixup {a.mixup:g}", a.mixup),
            (f"cutmix {a.cutmix:g}", a.cutmix),
            (f"ricap {a.ricap:g}", a.ricap),
            ("mirror test-time augmentation", a.test_flip),
        )
        if on
    ]
    parts.append("augment: " + (", ".join(augment) if augment else "none"))
    if config.transfer.pretrained:
        parts.append("fine-tuned from pretrained weights")
    if config.distill.teacher:
        parts.append("distilled from a teacher")
    return "; ".join(parts)


def write_run_report(
    run_dir: Path, run: RunSetup, metrics: dict, history: list[dict], seconds: float, probs: torch.Tensor
) -> None:
    config = run.config
    summary = {
        "model": config.model.name,
        "recipe": describe_recipe(config),
        "data": run.sources.layout,
        "classes": len(run.sources.classes),
        "train images": len(run.train),
        "val images": len(run.val),
        "image size": f"{config.data.img_size} px, {run.train.channels} channel(s)",
        "epochs": f"{sum(row['epoch'] > 0 for row in history)} of {config.train.epochs}"
        + (" after a linear probe (epoch 0)" if history and history[0]["epoch"] == 0 else ""),
        "precision": precision_name(run.autocast_dtype),
        "device": str(run.device),
        "run seconds": round(seconds, 1),
    }
    if run.pretrained:
        start = run.pretrained
        sha = f", sha256 {start['sha256'][:16]}…" if start["sha256"] else ""
        summary["pretrained weights"] = f"{start['name']} ({start['source'] or 'local file'}{sha})"
    pre = run.preprocessing
    summary["preprocessing"] = (
        f"{pre.resize} {pre.crop_pct:g} of the shorter side, {pre.interpolation}, "
        f"mean {', '.join(f'{m:.3f}' for m in pre.mean)}, std {', '.join(f'{s:.3f}' for s in pre.std)}"
    )
    write_outputs(run_dir, metrics, history, summary, val=run.val, probs=probs.numpy(), train=run.train)
