"""Training: small loop functions over explicit objects, and `fit`, which wires them up.

fit(config, run_dir): scan sources -> decode once into caches -> create the model with its
preprocessing -> optimizer and schedule -> per epoch, train one epoch and evaluate ->
save last/best -> metrics.json and report.html from the best model.

Every epoch seeds its own generator from (seed, epoch), so a resumed run replays exactly
the shuffles and augmentations the uninterrupted run would have drawn.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.config import AugmentConfig, Config, load_config, save_config
from imgcls.data.augment import augment_batch
from imgcls.data.cache import ImageCache, build_cache
from imgcls.data.loader import batch_indices, cache_tensors, steps_per_epoch
from imgcls.data.preprocess import Preprocessing, channel_stats, to_model_input
from imgcls.data.sources import DataSources, resolve_training_data
from imgcls.errors import CheckpointError, ConfigError
from imgcls.inference import autocast, batched_logits, cpu_has_bf16
from imgcls.losses import build_loss
from imgcls.metrics import classification_metrics
from imgcls.models import create_model
from imgcls.optim import build_optimizer, build_schedule
from imgcls.progress import progress_bar

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict
    history: list[dict]
    best_checkpoint: Path


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    preprocessing: Preprocessing,
    augment: AugmentConfig,
    batch_size: int,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    desc: str = "train",
) -> EpochStats:
    """One pass over (N, H, W, C) uint8 images with per-image random augmentation."""
    model.train()
    device = next(model.parameters()).device
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = list(batch_indices(len(labels), batch_size, shuffle=True, generator=generator))
    bar = progress_bar(total=sum(len(b) for b in batches), desc=desc, unit="img")
    try:
        for index in batches:
            batch = augment_batch(images[index], augment, generator).to(device)
            target = labels[index].to(device)
            x = to_model_input(batch, preprocessing, channels_last=channels_last)
            with autocast(autocast_dtype, device):
                logits = model(x)
                loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(target)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(target)
            bar.update(len(target))
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    finally:
        bar.close()
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - start)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 1024,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> tuple[float, float, torch.Tensor]:
    """(loss, accuracy, probabilities) on a labelled set, in eval mode."""
    logits = batched_logits(
        model, images, preprocessing, batch_size=batch_size, channels_last=channels_last, autocast_dtype=autocast_dtype
    )
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy, logits.softmax(1)


def choose_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return None


def checkpoint_metadata(config: Config, classes: tuple[str, ...], preprocessing: Preprocessing, **training) -> dict:
    return {
        "task": "single-label",
        "model": {"name": config.model.name, "kwargs": dict(config.model.kwargs)},
        "classes": list(classes),
        "preprocess": preprocessing.to_dict(),
        "training": training,
    }


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("imgcls").addHandler(handler)
    return handler


@dataclass
class TrainingRun:
    """Everything one training run works with, built once by `prepare`."""

    config: Config
    sources: DataSources
    train: ImageCache
    val: ImageCache
    preprocessing: Preprocessing
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast_dtype: torch.dtype | None

    def metadata(self, **training) -> dict:
        return checkpoint_metadata(self.config, self.sources.classes, self.preprocessing, **training)


def decode_sources(config: Config, sources: DataSources) -> tuple[ImageCache, ImageCache]:
    data = config.data
    channels = None if data.channels == "auto" else int(data.channels)
    common = dict(size=data.img_size, resize=data.resize, max_pixels=data.max_pixels, workers=data.decode_workers)
    train = build_cache(sources.train, channels=channels, desc="decode train", **common)
    val = build_cache(sources.val, channels=train.channels, desc="decode val", **common)
    return train, val


def prepare(config: Config, device: torch.device) -> TrainingRun:
    """Scan and decode the data, then create the model, optimizer and schedule."""
    data, tc = config.data, config.train
    sources = resolve_training_data(data.train, data.val, val_fraction=data.val_fraction, seed=tc.seed)
    log.info("data: %s; %d classes, %d train and %d val images", sources.layout, len(sources.classes),
             len(sources.train), len(sources.val))  # fmt: skip
    train, val = decode_sources(config, sources)
    mean, std = channel_stats(train.images)
    pre = Preprocessing(data.img_size, train.channels, mean, std, data.resize, data.max_pixels)
    model = create_model(config.model.name, num_classes=len(sources.classes), in_chans=pre.channels,
                         img_size=pre.img_size, **config.model.kwargs)  # fmt: skip
    model = model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, config.optim)
    steps = steps_per_epoch(len(train), tc.batch_size)
    scheduler = build_schedule(optimizer, config.optim, steps_per_epoch=steps, epochs=tc.epochs)
    dtype = choose_autocast(tc.precision, device)
    log.info("model %s, %s parameters, %s, %s", config.model.name, f"{sum(p.numel() for p in model.parameters()):,}",
             "bfloat16 autocast" if dtype else "float32", "channels_last" if tc.channels_last else "NCHW")  # fmt: skip
    return TrainingRun(config, sources, train, val, pre, model, optimizer, scheduler, dtype)


def restore(path: Path, run: TrainingRun) -> dict:
    """Load model, optimizer and schedule state from a last.safetensors; return its resume state."""
    tensors, meta = ckpt.load_checkpoint(path)
    state = meta.get("resume")
    if state is None:
        raise CheckpointError(f"{path} holds no training state to resume from.")
    run.model.load_state_dict(ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX))
    ckpt.optimizer_from_tensors(run.optimizer, tensors, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    return state


def save_epoch(run_dir: Path, run: TrainingRun, history: list[dict], best_acc: float) -> float:
    """best.safetensors when validation accuracy improved, then last.safetensors (with the
    optimizer and schedule state) and history.csv; returns the best accuracy so far."""
    row = history[-1]
    weights = {ckpt.MODEL_PREFIX + k: v for k, v in run.model.state_dict().items()}
    meta = run.metadata(epoch=row["epoch"], val_accuracy=row["val_acc"])
    if row["val_acc"] > best_acc:
        best_acc = row["val_acc"]
        ckpt.save_checkpoint(run_dir / "best.safetensors", weights, meta)
    optim_tensors, optim_state = ckpt.optimizer_to_tensors(run.optimizer)
    resume = {"epoch": row["epoch"], "best_val_acc": best_acc, "history": history,
              "optimizer": optim_state, "scheduler": run.scheduler.state_dict()}  # fmt: skip
    ckpt.save_checkpoint(run_dir / "last.safetensors", {**weights, **optim_tensors}, {**meta, "resume": resume})
    write_history(run_dir / "history.csv", history)
    return best_acc


def fit(config: Config | None, run_dir: Path, *, resume: bool = False) -> FitResult:
    """Train a model as `config` says, writing everything of the run into run_dir.

    With resume, the run continues from run_dir/last.safetensors with run_dir/config.yaml
    (config may then be None)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "last.safetensors").is_file():
            raise CheckpointError(f"nothing to resume: {run_dir / 'last.safetensors'} does not exist.")
        config = load_config(run_dir / "config.yaml")
        log.info("resuming %s with its saved config.yaml", run_dir)
    elif config is None:
        raise ConfigError("fit needs a config unless it resumes a run.")
    elif (run_dir / "last.safetensors").exists():
        raise ConfigError(f"{run_dir} already holds a run. Pass --resume to continue it, or choose another --out.")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    handler = _log_to_file(run_dir)
    try:
        return _fit(config, run_dir, resume)
    finally:
        logging.getLogger("imgcls").removeHandler(handler)
        handler.close()


def _fit(config: Config, run_dir: Path, resume: bool) -> FitResult:
    started = time.perf_counter()
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    run = prepare(config, torch.device("cpu"))
    history: list[dict] = []
    start_epoch, best_acc = 1, -1.0
    if resume:
        state = restore(run_dir / "last.safetensors", run)
        history, start_epoch, best_acc = state["history"], state["epoch"] + 1, state["best_val_acc"]
        log.info("resumed after epoch %d", state["epoch"])

    train_x, train_y = cache_tensors(run.train)
    val_x, val_y = cache_tensors(run.val)
    loss_fn = build_loss(tc.label_smoothing)
    for epoch in range(start_epoch, tc.epochs + 1):
        torch.manual_seed(tc.seed * 100_003 + epoch)  # dropout and other global draws
        stats = train_one_epoch(
            run.model, train_x, train_y, optimizer=run.optimizer, scheduler=run.scheduler, loss_fn=loss_fn,
            preprocessing=run.preprocessing, augment=config.augment, batch_size=tc.batch_size,
            generator=epoch_generator(tc.seed, epoch), autocast_dtype=run.autocast_dtype,
            channels_last=tc.channels_last, desc=f"epoch {epoch}/{tc.epochs}",
        )  # fmt: skip
        val_loss, val_acc, _ = evaluate(
            run.model, val_x, val_y, run.preprocessing, batch_size=tc.eval_batch_size,
            autocast_dtype=run.autocast_dtype, channels_last=tc.channels_last,
        )  # fmt: skip
        history.append({
            "epoch": epoch, "train_loss": round(stats.loss, 6), "train_acc": round(stats.accuracy, 6),
            "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6),
            "lr": run.optimizer.param_groups[0]["lr"], "seconds": round(stats.seconds, 3),
        })  # fmt: skip
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s (%.0f img/s)",
                 epoch, tc.epochs, stats.loss, stats.accuracy, val_loss, val_acc, stats.seconds,
                 stats.images / stats.seconds)  # fmt: skip
        best_acc = save_epoch(run_dir, run, history, best_acc)

    metrics = _final_metrics(run_dir, run, val_x, val_y)
    _write_report(run_dir, run, metrics, history, time.perf_counter() - started)
    return FitResult(run_dir, metrics, history, run_dir / "best.safetensors")


def _final_metrics(run_dir: Path, run: TrainingRun, val_x: torch.Tensor, val_y: torch.Tensor) -> dict:
    """Metrics of the best checkpoint on val, in float32, as `imgcls evaluate` computes them."""
    tensors, _ = ckpt.load_checkpoint(run_dir / "best.safetensors")
    run.model.load_state_dict(ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX))
    tc = run.config.train
    _, _, probs = evaluate(
        run.model, val_x, val_y, run.preprocessing, batch_size=tc.eval_batch_size, channels_last=tc.channels_last
    )
    skipped = run.train.skipped + run.val.skipped
    metrics = classification_metrics(val_y.numpy(), probs.numpy(), run.sources.classes, skipped)
    ckpt.atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False).encode())
    return metrics


def _write_report(run_dir: Path, run: TrainingRun, metrics: dict, history: list[dict], seconds: float) -> None:
    from imgcls.report import write_report

    config = run.config
    summary = {
        "model": config.model.name,
        "data": run.sources.layout,
        "classes": len(run.sources.classes),
        "train images": len(run.train),
        "val images": len(run.val),
        "image size": f"{config.data.img_size} px, {run.train.channels} channel(s)",
        "epochs": config.train.epochs,
        "precision": "bfloat16 autocast" if run.autocast_dtype else "float32",
        "run seconds": round(seconds, 1),
    }
    write_report(run_dir / "report.html", metrics=metrics, history=history, summary=summary)
