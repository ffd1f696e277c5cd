"""Training: small loop functions over explicit objects, and `fit`, which wires them up.

fit(config, run_dir): prepare (data, model, optimizer, schedule; imgcls.prepare) -> per
epoch, train one epoch and evaluate -> save last/best -> metrics.json and report.html
from the best model.

Every epoch seeds its own generators from (seed, epoch), so a resumed run replays exactly
the shuffles and augmentations the uninterrupted run would have drawn. Ctrl-C stops after
the current optimizer step and saves last.safetensors with the epoch's progress and both
RNG states, so `--resume` finishes that epoch exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config, load_config, save_config
from imgcls.data.augment import apply_per_image, augment_batch, mix_batch, mixing_enabled
from imgcls.data.loader import balanced_batch_indices, batch_indices, cache_tensors
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.device import autocast, constant, resolve_device, rng_states, set_rng_states, to_device
from imgcls.errors import CheckpointError, ConfigError
from imgcls.losses import correct_predictions, distillation_loss
from imgcls.models.registry import is_classic
from imgcls.prepare import TrainingRun, prepare
from imgcls.progress import progress_bar
from imgcls.streaming import stream_epoch, stream_workers
from imgcls.train_outputs import write_outputs, write_run_report
from imgcls.train_state import (
    EpochInterrupted,
    EpochProgress,
    PeriodicSave,
    clear_temporaries,
    restore,
    save_last,
    stop_on_sigint,
    stopped,
    train_resumably,
    write_history,
)
from imgcls.transfer import set_backbone_trainable
from imgcls.validate import evaluate, final_metrics

log = logging.getLogger(__name__)

# Steps between reads of the running loss (each read makes the host wait for a GPU).
SYNC_EVERY = 20


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

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return constant(tuple(values), x.device).view(1, -1, 1, 1)

    return (x * column(student.std) + column(student.mean) - column(teacher.mean)) / column(teacher.std)


def train_one_epoch(
    run: TrainingRun,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator,
    desc: str = "train",
    *,
    epoch: int = 1,
    progress: EpochProgress | None = None,
    stop: Callable[[], bool] | None = None,
    periodic: PeriodicSave | None = None,
) -> EpochStats:
    """One pass over the training set with per-image random augmentation: `data` is the
    cache's (N, H, W, C) uint8 images and labels, or None for the run's stream of shards.

    `progress` of an interrupted epoch continues it after its last step; `stop()` true after
    an optimizer step raises EpochInterrupted carrying the progress and RNG states, and
    `periodic` saves them when it is due.

    Batches are drawn and augmented on the CPU from `generator`, then moved to the run's
    device as uint8 (a quarter of the float32 bytes) and normalised there. The running sums
    stay on the device and are read every SYNC_EVERY steps, so a GPU is not made to wait
    for the host after every step."""
    config, model = run.config, run.model
    tc, augment = config.train, config.augment
    model.train()
    done = progress or EpochProgress()
    if progress is not None and not distributed.is_main():
        # The saved running sums are rank 0's share (it alone saves): the others count from here,
        # so the epoch's loss and accuracy average over rank 0's first steps and everyone's rest.
        done = replace(progress, loss_sum=0.0, correct=0, seen=0)
    steps, total, before, batches = _epoch_batches(run, data, generator, epoch, done.step)
    if done.generator_state is not None:  # the batch order is drawn above; the draws go on from here
        generator.set_state(done.generator_state)
        set_rng_states({"torch": done.torch_state, "cuda": done.cuda_state}, run.device)
    start = time.perf_counter() - done.seconds
    # loss sum, correct predictions: float64 on the device, the same sums as adding floats
    sums = torch.tensor([done.loss_sum, done.correct], dtype=torch.float64, device=run.device)
    bar = progress_bar(total=total, desc=desc, unit="img")
    bar.update(before)
    try:
        for i, (images, labels) in enumerate(batches, start=done.step):
            batch = augment_batch(apply_per_image(images, run.per_image), augment, generator)
            hard = to_device(labels, run.device)
            x = to_model_input(to_device(batch, run.device), run.preprocessing, channels_last=tc.channels_last)
            target = hard
            if mixing_enabled(augment):
                x, target = mix_batch(x, hard, len(run.sources.classes), augment, generator)
            stepped = (i + 1) % tc.accumulate == 0 or i + 1 == steps
            logits, loss = _forward_backward(run, x, target, sync=stepped)
            if stepped:
                _optimizer_step(run)
            sums[0] += loss.detach().double() * len(hard)
            sums[1] += correct_predictions(logits, hard)  # against the unmixed labels
            done.seen += len(hard)
            done.step = i + 1
            bar.update(len(hard))
            if done.step % SYNC_EVERY == 0:
                bar.set_postfix(loss=f"{sums[0].item() / done.seen:.4f}", refresh=False)
            if stepped and done.step < steps:
                if stop is not None and stop():
                    raise EpochInterrupted(snapshot(done, generator, run.device, start, sums), steps)
                if periodic is not None and periodic.due():
                    periodic(snapshot(done, generator, run.device, start, sums))
    finally:
        bar.close()
    done.loss_sum, done.correct = sums[0].item(), int(sums[1].item())
    loss_sum, correct, seen = distributed.all_reduce_sums(done.loss_sum, done.correct, done.seen)
    return EpochStats(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - start)


def _forward_backward(
    run: TrainingRun, x: torch.Tensor, target: torch.Tensor, *, sync: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of one batch; its gradients accumulate (scaled for float16). With several
    processes, DDP averages them only on the batch before an optimizer step (`sync`): the
    accumulated sum is the same, with one all-reduce per step instead of one per batch."""
    config = run.config
    forward = run.ddp or run.model
    with run.ddp.no_sync() if run.ddp is not None and not sync else contextlib.nullcontext():
        with autocast(run.autocast_dtype, x.device):
            logits = forward(x).float()
            teacher_logits = None
            if run.teacher is not None:
                with torch.no_grad():
                    teacher_x = _teacher_input(x, run.preprocessing, run.teacher.preprocessing)
                    teacher_logits = run.teacher.model(teacher_x).float()
        loss = run.loss_fn(logits, target)  # in float32, outside autocast
        if teacher_logits is not None:
            loss = distillation_loss(logits, teacher_logits, loss, alpha=config.distill.alpha,
                                     temperature=config.distill.temperature)  # fmt: skip
        run.scaler.scale(loss / config.train.accumulate).backward()
    return logits, loss


def _epoch_batches(
    run: TrainingRun,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator,
    epoch: int,
    start: int,
) -> tuple[int, int, int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(steps, images in the epoch, images before step `start`, this process's (images, labels)
    batches from step `start` on)."""
    tc = run.config.train
    if data is None:
        workers = stream_workers(run.config)
        steps, batches = stream_epoch(run.stream, run.train, epoch, workers, start)
        return steps, steps * run.stream.batch_size, start * run.stream.batch_size, batches
    images, labels = data
    if tc.balanced_sampling:
        order = list(balanced_batch_indices(labels, tc.batch_size, generator=generator))
    else:
        order = list(batch_indices(len(labels), tc.batch_size, shuffle=True, generator=generator))
    order = distributed.shard_batches(order)  # this process's share of each global batch
    sizes = [len(index) for index in order]
    batches = ((images[index], labels[index]) for index in order[start:])
    return len(order), sum(sizes), sum(sizes[:start]), batches


def snapshot(
    done: EpochProgress, generator: torch.Generator, device: torch.device, start: float,
    sums: torch.Tensor | None = None,
) -> EpochProgress:  # fmt: skip
    """A copy of an epoch's progress (with the running `sums` kept on the device, when given)
    and the RNG states after its last step (reading them draws nothing, so saving never
    changes the run)."""
    if sums is not None:
        done = replace(done, loss_sum=sums[0].item(), correct=int(sums[1].item()))
    states = rng_states(device)
    return replace(done, seconds=time.perf_counter() - start, generator_state=generator.get_state(),
                   torch_state=states["torch"], cuda_state=states.get("cuda"))  # fmt: skip


def _optimizer_step(run: TrainingRun) -> None:
    """Clip (on the true gradients: unscaled first), step, update the loss scale, schedule, EMA.
    With float16 the scaler skips a step whose gradients overflowed and lowers the scale."""
    if run.config.optim.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.optim.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # A first float16 step skipped for overflow makes PyTorch warn that the schedule moved
        # before the optimizer did; the schedule counts steps taken or skipped alike.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
        run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model, step=run.scheduler.last_epoch)


def save_epoch(run_dir: Path, run: TrainingRun, history: list[dict], best_acc: float) -> float:
    """best.safetensors when validation accuracy improved, then last.safetensors (with the
    optimizer, schedule and EMA state) and history.csv; returns the best accuracy so far."""
    row = history[-1]
    evaluated = {ckpt.MODEL_PREFIX + k: v for k, v in run.eval_model.state_dict().items()}
    meta = run.metadata(epoch=row["epoch"], val_accuracy=row["val_acc"], ema=run.ema is not None)
    if row["val_acc"] > best_acc:
        best_acc = row["val_acc"]
        ckpt.save_checkpoint(run_dir / "best.safetensors", evaluated, meta)
    save_last(run_dir, run, history, best_acc, meta)
    return best_acc


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
    if resume:
        clear_temporaries(run_dir)
        log.info("resuming %s with its saved config.yaml", run_dir)
    elif (run_dir / "last.safetensors").exists():
        raise ConfigError(f"{run_dir} already holds a run. Pass --resume to continue it, or choose another --out.")
    run_dir.mkdir(parents=True, exist_ok=True)
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
        from imgcls.train_classic import fit_classic_run

        fitted = fit_classic_run(config, run_dir)
        write_history(run_dir / "history.csv", fitted.history)
        summary = {**fitted.summary, "run seconds": round(time.perf_counter() - started, 1)}
        write_outputs(run_dir, fitted.metrics, fitted.history, summary, val=fitted.val, probs=fitted.val_probs,
                train=fitted.train)  # fmt: skip
        return FitResult(run_dir, fitted.metrics, fitted.history, run_dir / "best.safetensors")
    if config.semi.unlabeled:  # labelled + unlabeled images: imgcls.train_semi's loop, this module's parts
        from imgcls.train_semi import fit_semi_run

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
    with stop_on_sigint() as stop:
        for epoch in range(start_epoch, tc.epochs + 1):
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


def _train_epoch(
    run_dir: Path, run: TrainingRun, epoch: int, history: list[dict], best_acc: float,
    partial: EpochProgress | None, stop: Callable[[], bool], data: tuple,
) -> float:  # fmt: skip
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

    one_epoch = functools.partial(train_one_epoch, run, train, generator, desc=f"epoch {epoch}/{tc.epochs}",
                                  epoch=epoch, progress=partial, stop=stop)  # fmt: skip
    stats = train_resumably(run_dir, run, epoch, history, best_acc, one_epoch)
    # Validated as the model will predict, mirror test-time augmentation included: checking
    # without it saved ~2 s an epoch on the fashion-mnist recipe but chose epoch 15 of 18
    # (0.9484 on test with the flip) over the last one (0.9500).
    val_loss, val_acc, _ = evaluate(run.eval_model, val_x, val_y, run.preprocessing, batch_size=tc.eval_batch_size,
                                    autocast_dtype=run.autocast_dtype, channels_last=tc.channels_last,
                                    device=run.device, shared=True)  # fmt: skip
    if run.plateau is not None:
        run.plateau.update(val_loss)
    history.append({
        "epoch": epoch, "train_loss": round(stats.loss, 6), "train_acc": round(stats.accuracy, 6),
        "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6), "lr": lr, "seconds": round(stats.seconds, 3),
    })  # fmt: skip
    log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s (%.0f img/s)",
             epoch, tc.epochs, stats.loss, stats.accuracy, val_loss, val_acc, stats.seconds,
             stats.images / stats.seconds)  # fmt: skip
    if not distributed.is_main():  # every rank has the same scores, so the same best, unsaved
        return max(best_acc, val_acc)
    return save_epoch(run_dir, run, history, best_acc)
