"""Training: small loop functions over explicit objects, and `fit`, which wires them up.

fit(config, run_dir): prepare (data, model, optimizer, schedule; imgcls.prepare) -> per
epoch, train one epoch and evaluate -> save last/best -> metrics.json and report.html
from the best model.

Every epoch seeds its own generators from (seed, epoch), so a resumed run replays exactly
the shuffles and augmentations the uninterrupted run would have drawn.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.config import Config, load_config, save_config
from imgcls.data.augment import apply_per_image, augment_batch, mix_batch, mixing_enabled
from imgcls.data.loader import balanced_batch_indices, batch_indices, cache_tensors
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.errors import CheckpointError, ConfigError
from imgcls.inference import autocast, batched_logits
from imgcls.losses import distillation_loss
from imgcls.metrics import classification_metrics
from imgcls.models.registry import is_classic
from imgcls.prepare import TrainingRun, prepare
from imgcls.progress import progress_bar
from imgcls.transfer import set_backbone_trainable

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
EMA_PREFIX = "ema."


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


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _teacher_input(x: torch.Tensor, student: Preprocessing, teacher: Preprocessing) -> torch.Tensor:
    """Re-normalise the student's (possibly mixed) input with the teacher's mean and std."""
    if (student.mean, student.std) == (teacher.mean, teacher.std):
        return x
    shape = (1, -1, 1, 1)
    pixels = x * torch.tensor(student.std).view(shape) + torch.tensor(student.mean).view(shape)
    return (pixels - torch.tensor(teacher.mean).view(shape)) / torch.tensor(teacher.std).view(shape)


def train_one_epoch(
    run: TrainingRun, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, desc: str = "train"
) -> EpochStats:
    """One pass over (N, H, W, C) uint8 images with per-image random augmentation."""
    config, model = run.config, run.model
    tc, augment = config.train, config.augment
    model.train()
    if tc.balanced_sampling:
        batches = list(balanced_batch_indices(labels, tc.batch_size, generator=generator))
    else:
        batches = list(batch_indices(len(labels), tc.batch_size, shuffle=True, generator=generator))
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = progress_bar(total=sum(len(b) for b in batches), desc=desc, unit="img")
    try:
        for i, index in enumerate(batches):
            batch = augment_batch(apply_per_image(images[index], run.per_image), augment, generator)
            hard = labels[index]
            x = to_model_input(batch, run.preprocessing, channels_last=tc.channels_last)
            target = hard
            if mixing_enabled(augment):
                x, target = mix_batch(x, hard, len(run.sources.classes), augment, generator)
            with autocast(run.autocast_dtype, x.device):
                logits = model(x).float()
                loss = run.loss_fn(logits, target)
                if run.teacher is not None:
                    with torch.no_grad():
                        teacher_x = _teacher_input(x, run.preprocessing, run.teacher.preprocessing)
                        teacher_logits = run.teacher.model(teacher_x).float()
                    loss = distillation_loss(logits, teacher_logits, loss, alpha=config.distill.alpha,
                                             temperature=config.distill.temperature)  # fmt: skip
            (loss / tc.accumulate).backward()
            if (i + 1) % tc.accumulate == 0 or i + 1 == len(batches):
                _optimizer_step(run)
            total_loss += loss.item() * len(hard)
            correct += (logits.argmax(1) == hard).sum().item()  # against the unmixed labels
            seen += len(hard)
            bar.update(len(hard))
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    finally:
        bar.close()
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - start)


def _optimizer_step(run: TrainingRun) -> None:
    if run.config.optim.clip_grad_norm:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.optim.clip_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model, step=run.scheduler.last_epoch)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
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


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def restore(path: Path, run: TrainingRun) -> dict:
    """Load model, EMA, optimizer and schedule state from a last.safetensors; return its resume state."""
    tensors, meta = ckpt.load_checkpoint(path)
    state = meta.get("resume")
    if state is None:
        raise CheckpointError(f"{path} holds no training state to resume from.")
    run.model.load_state_dict(ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX))
    if run.ema is not None:
        run.ema.module.load_state_dict(ckpt.split_prefix(tensors, EMA_PREFIX))
    ckpt.optimizer_from_tensors(run.optimizer, tensors, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.plateau is not None:
        run.plateau.load(state["plateau"])
    return state


def save_epoch(run_dir: Path, run: TrainingRun, history: list[dict], best_acc: float) -> float:
    """best.safetensors when validation accuracy improved, then last.safetensors (with the
    optimizer, schedule and EMA state) and history.csv; returns the best accuracy so far."""
    row = history[-1]
    evaluated = {ckpt.MODEL_PREFIX + k: v for k, v in run.eval_model.state_dict().items()}
    meta = run.metadata(epoch=row["epoch"], val_accuracy=row["val_acc"], ema=run.ema is not None)
    if row["val_acc"] > best_acc:
        best_acc = row["val_acc"]
        ckpt.save_checkpoint(run_dir / "best.safetensors", evaluated, meta)
    tensors = {ckpt.MODEL_PREFIX + k: v for k, v in run.model.state_dict().items()}
    if run.ema is not None:
        tensors.update({EMA_PREFIX + k: v for k, v in run.ema.module.state_dict().items()})
    optim_tensors, optim_state = ckpt.optimizer_to_tensors(run.optimizer)
    resume = {"epoch": row["epoch"], "best_val_acc": best_acc, "history": history, "optimizer": optim_state,
              "scheduler": run.scheduler.state_dict(),
              "plateau": run.plateau.to_dict() if run.plateau is not None else None}  # fmt: skip
    ckpt.save_checkpoint(run_dir / "last.safetensors", {**tensors, **optim_tensors}, {**meta, "resume": resume})
    write_history(run_dir / "history.csv", history)
    return best_acc


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("imgcls").addHandler(handler)
    return handler


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
    logger = logging.getLogger("imgcls")
    level = logger.level
    if not level or level > logging.INFO:  # train.log records the epochs even when called from Python
        logger.setLevel(logging.INFO)
    try:
        return _fit(config, run_dir, resume)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _epochs_without_progress(history: list[dict]) -> int:
    best = max(range(len(history)), key=lambda i: history[i]["val_acc"])  # first best on ties
    return len(history) - 1 - best


def _fit(config: Config, run_dir: Path, resume: bool) -> FitResult:
    started = time.perf_counter()
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    if is_classic(config.model.name):
        from imgcls.train_classic import fit_classic_run

        metrics, history, summary = fit_classic_run(config, run_dir)
        write_history(run_dir / "history.csv", history)
        _report(run_dir, metrics, history, {**summary, "run seconds": round(time.perf_counter() - started, 1)})
        return FitResult(run_dir, metrics, history, run_dir / "best.safetensors")
    run = prepare(config, torch.device("cpu"))
    history: list[dict] = []
    start_epoch, best_acc = 1, -1.0
    if resume:
        state = restore(run_dir / "last.safetensors", run)
        history, start_epoch, best_acc = state["history"], state["epoch"] + 1, state["best_val_acc"]
        log.info("resumed after epoch %d", state["epoch"])

    train_x, train_y = cache_tensors(run.train)
    val_x, val_y = cache_tensors(run.val)
    for epoch in range(start_epoch, tc.epochs + 1):
        if tc.early_stopping and history and _epochs_without_progress(history) >= tc.early_stopping:
            log.info("early stopping: no validation progress in %d epochs", tc.early_stopping)
            break
        if config.transfer.freeze_backbone and config.transfer.unfreeze_after:
            set_backbone_trainable(run.model, epoch > config.transfer.unfreeze_after)
        torch.manual_seed(epoch_seed(tc.seed, epoch))  # dropout and torchvision's per-image draws
        lr = run.optimizer.param_groups[0]["lr"]
        generator = torch.Generator().manual_seed(epoch_seed(tc.seed, epoch))
        stats = train_one_epoch(run, train_x, train_y, generator, desc=f"epoch {epoch}/{tc.epochs}")
        val_loss, val_acc, _ = evaluate(run.eval_model, val_x, val_y, run.preprocessing, batch_size=tc.eval_batch_size,
                                        autocast_dtype=run.autocast_dtype, channels_last=tc.channels_last)  # fmt: skip
        if run.plateau is not None:
            run.plateau.update(val_loss)
        history.append({
            "epoch": epoch, "train_loss": round(stats.loss, 6), "train_acc": round(stats.accuracy, 6),
            "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6), "lr": lr, "seconds": round(stats.seconds, 3),
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
    model = run.eval_model
    model.load_state_dict(ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX))
    tc = run.config.train
    _, _, probs = evaluate(
        model, val_x, val_y, run.preprocessing, batch_size=tc.eval_batch_size, channels_last=tc.channels_last
    )
    skipped = run.train.skipped + run.val.skipped
    metrics = classification_metrics(val_y.numpy(), probs.numpy(), run.sources.classes, skipped)
    ckpt.write_json(run_dir / "metrics.json", metrics)
    return metrics


def _report(run_dir: Path, metrics: dict, history: list[dict], summary: dict) -> None:
    from imgcls.report import write_report  # the one step right of training: the run's own report

    write_report(run_dir / "report.html", metrics=metrics, history=history, summary=summary)


def _write_report(run_dir: Path, run: TrainingRun, metrics: dict, history: list[dict], seconds: float) -> None:
    config = run.config
    summary = {
        "model": config.model.name,
        "data": run.sources.layout,
        "classes": len(run.sources.classes),
        "train images": len(run.train),
        "val images": len(run.val),
        "image size": f"{config.data.img_size} px, {run.train.channels} channel(s)",
        "epochs": f"{len(history)} of {config.train.epochs}",
        "precision": "bfloat16 autocast" if run.autocast_dtype else "float32",
        "run seconds": round(seconds, 1),
    }
    _report(run_dir, metrics, history, summary)
