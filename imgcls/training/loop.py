"""The supervised step and epoch: forward, loss, backward and the optimizer step over the
decoded (or streamed) training set, with accumulation, mixing, distillation and AMP; plus the
per-epoch save. The semi-supervised loop (imgcls.training.semi) reuses these parts."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.data.augment import apply_per_image, augment_batch, mix_batch, mixing_enabled
from imgcls.data.loader import balanced_batch_indices, batch_indices
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.device import autocast, constant, rng_states, set_rng_states, to_device
from imgcls.progress import progress_bar
from imgcls.training import distributed
from imgcls.training.losses import correct_predictions, distillation_loss
from imgcls.training.probe import train_mode
from imgcls.training.run import TrainingRun
from imgcls.training.state import (
    EpochInterrupted,
    EpochProgress,
    PeriodicSave,
    save_last,
)
from imgcls.training.streaming import stream_epoch, stream_workers

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
    train_mode(model, freeze_bn=config.transfer.freeze_bn)
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
                optimizer_step(run)
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
            loss = distillation_loss(
                logits, teacher_logits, loss, alpha=config.distill.alpha, temperature=config.distill.temperature
            )
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
    done: EpochProgress,
    generator: torch.Generator,
    device: torch.device,
    start: float,
    sums: torch.Tensor | None = None,
) -> EpochProgress:
    """A copy of an epoch's progress (with the running `sums` kept on the device, when given)
    and the RNG states after its last step (reading them draws nothing, so saving never
    changes the run)."""
    if sums is not None:
        done = replace(done, loss_sum=sums[0].item(), correct=int(sums[1].item()))
    states = rng_states(device)
    return replace(
        done,
        seconds=time.perf_counter() - start,
        generator_state=generator.get_state(),
        torch_state=states["torch"],
        cuda_state=states.get("cuda"),
    )


def optimizer_step(run: TrainingRun) -> None:
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
