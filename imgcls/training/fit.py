"""Training: small loop functions over explicit objects, and `fit`, which wires them up.

fit(config, run_dir): prepare (data, model, optimizer, schedule; imgcls.training.run) -> per
epoch, train one epoch and evaluate -> save last/best -> metrics.json and report.html
from the best model.

Every epoch seeds its own generators from (seed, epoch), so a resumed run replays exactly
the shuffles and augmentations the uninterrupted run would have drawn. Ctrl-C stops after
the current optimizer step and saves last.safetensors with the epoch's progress and both
RNG states, so `--resume` finishes that epoch exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from imgcls.config import Config, load_config, save_config
from imgcls.data.loader import cache_tensors
from imgcls.device import resolve_device
from imgcls.errors import CheckpointError, ConfigError
from imgcls.files import exclusive_use
from imgcls.models.registry import is_classic
from imgcls.training import distributed
from imgcls.training.classic import fit_classic_run
from imgcls.training.loop import FitResult, epoch_seed, save_epoch, train_one_epoch
from imgcls.training.outputs import write_outputs, write_run_report
from imgcls.training.probe import fit_linear_probe, pooled_features
from imgcls.training.run import TrainingRun, prepare
from imgcls.training.semi import fit_semi_run
from imgcls.training.state import (
    EpochProgress,
    clear_temporaries,
    history_row,
    restore,
    stop_on_sigint,
    stopped,
    train_resumably,
    write_history,
)
from imgcls.training.transfer import set_backbone_trainable
from imgcls.training.validate import evaluate, final_metrics

log = logging.getLogger(__name__)


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("imgcls").addHandler(handler)
    return handler


def fit(config: Config | None, run_dir: Path, *, resume: bool = False, device: str | None = None) -> FitResult:
    """Train a model as `config` says, writing everything of the run into run_dir.

    With resume, the run continues from run_dir/last.safetensors with run_dir/config.yaml
    (config may then be None), on `device` when given instead of the saved train.device."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "last.safetensors").is_file():
            raise CheckpointError(f"nothing to resume: {run_dir / 'last.safetensors'} does not exist.")
        config = load_config(run_dir / "config.yaml")
        if device is not None:
            config = replace(config, train=replace(config.train, device=device))
    elif config is None:
        raise ConfigError("fit needs a config unless it resumes a run.")
    distributed.init_from_environment(resolve_device(config.train.device))
    if not distributed.is_main():  # rank 0 alone writes the run's files and log
        return _fit(config, run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the run folder {run_dir}: {err.strerror or err}. Choose another --out."
        ) from None
    # One process per run folder for the whole run: two would interleave train.log and
    # overwrite each other's checkpoints (two --resume would also delete each other's files).
    with exclusive_use(run_dir, "a training run"):
        return _fit_locked(config, run_dir, resume)


def _fit_locked(config: Config, run_dir: Path, resume: bool) -> FitResult:
    if resume:
        clear_temporaries(run_dir)
        log.info("resuming %s with its saved config.yaml", run_dir)
    elif (run_dir / "last.safetensors").exists():
        raise ConfigError(f"{run_dir} already holds a run. Pass --resume to continue it, or choose another --out.")
    if not resume:  # a resumed run keeps its file: rewriting it could only lose it to a kill
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
    single = "a classic model" if is_classic(config.model.name) else "--unlabeled" if config.semi.unlabeled else None
    if single and distributed.world_size() > 1:  # each process would fit and write on its own
        raise ConfigError(f"{single} trains in one process; run it without torchrun or --devices.")
    if is_classic(config.model.name):
        fitted = fit_classic_run(config, run_dir)
        write_history(run_dir / "history.csv", fitted.history)
        summary = {**fitted.summary, "run seconds": round(time.perf_counter() - started, 1)}
        write_outputs(
            run_dir, fitted.metrics, fitted.history, summary, val=fitted.val, probs=fitted.val_probs, train=fitted.train
        )
        return FitResult(run_dir, fitted.metrics, fitted.history, run_dir / "best.safetensors")
    if config.semi.unlabeled:  # labelled + unlabeled images: imgcls.training.semi's loop, this module's parts
        return fit_semi_run(config, run_dir, resume, started)
    run = prepare(config)
    run.ddp = distributed.wrap(run.model, sync_bn=tc.sync_bn, device=run.device)
    history: list[dict] = []
    start_epoch, best_acc, partial = 1, -1.0, None
    if resume:
        state, partial = restore(run_dir / "last.safetensors", run)
        history, start_epoch, best_acc = state["history"], state["epoch"] + 1, state["best_val_acc"]
        where = f"in epoch {start_epoch} after step {partial.step}" if partial else f"after epoch {state['epoch']}"
        log.info("resumed %s", where)

    train = None if run.stream is not None else cache_tensors(run.train)  # streamed: read as it trains
    val_x, val_y = cache_tensors(run.val)
    last_epoch = tc.epochs
    if not resume and config.transfer.linear_probe:
        best_acc = _probe_epoch(run_dir, run, history, best_acc, train, (val_x, val_y))
        if history and config.transfer.freeze_backbone and not config.transfer.unfreeze_after:
            # The head of a frozen network is a convex problem the probe solved exactly; epochs
            # of gradient steps would only approach the same classifier again.
            log.info("frozen backbone: the fitted classifier is final (set transfer.linear_probe=false to train it)")
            last_epoch = 0
    with stop_on_sigint() as stop:
        for epoch in range(start_epoch, last_epoch + 1):
            if tc.early_stopping and history and _epochs_without_progress(history) >= tc.early_stopping:
                log.info("early stopping: no validation progress in %d epochs", tc.early_stopping)
                break
            data = (train, val_x, val_y)
            best_acc = _train_epoch(run_dir, run, epoch, history, best_acc, partial, stop, data)
            partial = None
            if stop() and epoch < tc.epochs:
                stopped(run_dir, f"after epoch {epoch}")

    if run.stream is not None:  # each process met the broken images of its own shards
        run.train.skipped[:] = distributed.merge_lists(run.train.skipped, key="path")
    distributed.barrier()  # best.safetensors is complete before anyone reads it
    if not distributed.is_main():
        return FitResult(run_dir, {}, history, run_dir / "best.safetensors")
    metrics, probs = final_metrics(run_dir, run, val_x, val_y)
    write_run_report(run_dir, run, metrics, history, time.perf_counter() - started, probs)
    return FitResult(run_dir, metrics, history, run_dir / "best.safetensors")


def _probe_epoch(
    run_dir: Path, run: TrainingRun, history: list[dict], best_acc: float, train: tuple | None, val: tuple
) -> float:
    """Epoch 0: the classifier fitted by logistic regression on the frozen network's features
    (imgcls.training.probe), evaluated and saved like any epoch, so the best checkpoint is never
    worse on validation than the probe alone."""
    if train is None or run.multilabel:
        log.info("linear probe skipped: it needs decoded single-label training images")
        return best_acc
    started, tc = time.perf_counter(), run.config.train
    images, labels = train
    features = pooled_features(
        run.model,
        images,
        run.preprocessing,
        batch_size=tc.eval_batch_size,
        device=run.device,
        autocast_dtype=run.autocast_dtype,
        channels_last=tc.channels_last,
    )
    if not fit_linear_probe(run.model, features, labels.numpy(), run.config.transfer.probe_c):
        return best_acc
    if run.ema is not None:
        run.ema.set(run.model)  # the average starts from the fitted head, not the random one
    with torch.no_grad():
        head = run.model.get_classifier()
        logits = head(torch.from_numpy(features).to(head.weight.device, head.weight.dtype)).float().cpu()
    train_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    train_acc = (logits.argmax(1) == labels).float().mean().item()
    val_loss, val_acc, _ = evaluate(
        run.eval_model,
        *val,
        run.preprocessing,
        batch_size=tc.eval_batch_size,
        autocast_dtype=run.autocast_dtype,
        channels_last=tc.channels_last,
        device=run.device,
        shared=True,
    )
    seconds = time.perf_counter() - started
    history.append(history_row(0, (train_loss, train_acc), (val_loss, val_acc), 0.0, seconds))
    log.info(
        "epoch 0 (linear probe)  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s",
        train_loss,
        train_acc,
        val_loss,
        val_acc,
        seconds,
    )
    if not distributed.is_main():
        return max(best_acc, val_acc)
    return save_epoch(run_dir, run, history, best_acc)


def _train_epoch(
    run_dir: Path,
    run: TrainingRun,
    epoch: int,
    history: list[dict],
    best_acc: float,
    partial: EpochProgress | None,
    stop: Callable[[], bool],
    data: tuple,
) -> float:
    """Train (or finish) one epoch, evaluate, save; returns the best accuracy so far. On a
    stop request inside the epoch, saves last.safetensors with its progress and stops."""
    config, tc = run.config, run.config.train
    train, val_x, val_y = data
    if config.transfer.freeze_backbone and config.transfer.unfreeze_after:
        trainable = [p.requires_grad for p in run.model.parameters()]
        set_backbone_trainable(run.model, epoch > config.transfer.unfreeze_after)
        if run.ddp is not None and trainable != [p.requires_grad for p in run.model.parameters()]:
            # DDP averages the gradients of the parameters that were trainable when it was built
            run.ddp = distributed.wrap(run.model, sync_bn=False, device=run.device)
    if partial is None:
        torch.manual_seed(epoch_seed(tc.seed, epoch))  # dropout and torchvision's per-image draws
        partial = EpochProgress(lr=run.optimizer.param_groups[0]["lr"])
    lr = partial.lr
    generator = torch.Generator().manual_seed(epoch_seed(tc.seed, epoch))

    one_epoch = functools.partial(
        train_one_epoch,
        run,
        train,
        generator,
        desc=f"epoch {epoch}/{tc.epochs}",
        epoch=epoch,
        progress=partial,
        stop=stop,
    )
    stats = train_resumably(run_dir, run, epoch, history, best_acc, one_epoch)
    # Validated as the model will predict, mirror test-time augmentation included: checking
    # without it saved ~2 s an epoch on the fashion-mnist recipe but chose epoch 15 of 18
    # (0.9484 on test with the flip) over the last one (0.9500).
    val_loss, val_acc, _ = evaluate(
        run.eval_model,
        val_x,
        val_y,
        run.preprocessing,
        batch_size=tc.eval_batch_size,
        autocast_dtype=run.autocast_dtype,
        channels_last=tc.channels_last,
        device=run.device,
        shared=True,
    )
    if run.plateau is not None:
        run.plateau.update(val_loss)
    history.append(history_row(epoch, (stats.loss, stats.accuracy), (val_loss, val_acc), lr, stats.seconds))
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s (%.1f img/s)",
        epoch,
        tc.epochs,
        stats.loss,
        stats.accuracy,
        val_loss,
        val_acc,
        stats.seconds,
        stats.images / stats.seconds,
    )
    if not distributed.is_main():  # every rank has the same scores, so the same best, unsaved
        return max(best_acc, val_acc)
    return save_epoch(run_dir, run, history, best_acc)
