"""The one loop over an epoch's steps (`run_steps`), and the supervised epoch built on it.

Supervised training (`supervised_epoch`), semi-supervised training (imgcls.training.semi) and
the learning-rate range test (imgcls.training.lr_find) each hand `run_steps` their batches
and a step. It keeps the progress bar and the running loss and accuracy, and makes every
epoch interruptible: after an optimizer step, `stop()` true raises EpochInterrupted carrying
the epoch's progress and RNG states, and `periodic` saves them when it is due; given that
progress back, it finishes the epoch exactly as if it had never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from imgcls.data.loader import balanced_batch_indices, batch_indices
from imgcls.device import rng_states, set_rng_states
from imgcls.progress import progress_bar
from imgcls.training import distributed
from imgcls.training.optim import epoch_side
from imgcls.training.probe import train_mode
from imgcls.training.run import Optimisation, RunSetup
from imgcls.training.state import EpochInterrupted, EpochProgress, PeriodicSave
from imgcls.training.steps import Step, supervised_step
from imgcls.training.streaming import stream_epoch, stream_workers

# Steps between reads of the running sums (each read makes the host wait for a GPU).
SYNC_EVERY = 20


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    pseudo_rate: float | None = None  # semi-supervised: share of unlabeled images given a pseudo-label


@dataclass(frozen=True)
class EpochBatches:
    """An epoch's batches from some step on, with the counts its progress bar shows."""

    steps: int  # in the whole epoch
    images: int  # labelled images in the whole epoch
    before: int  # labelled images before the first batch of `batches`
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]


def run_steps(
    batches: EpochBatches,
    step: Step,
    generator: torch.Generator,
    device: torch.device,
    *,
    desc: str = "train",
    progress: EpochProgress | None = None,
    stop: Callable[[], bool] | None = None,
    periodic: PeriodicSave | None = None,
    report: Callable[[int, int, float], None] | None = None,
) -> EpochStats:
    """Take `step` over `batches`, continuing `progress` when an interrupted epoch resumes.

    `batches` must be drawn before this is called: the saved generator state is the one
    after the interrupted step's draws, and it replaces the generator's here. The running sums
    stay on the device and are read every SYNC_EVERY steps, so a GPU is not made to wait for
    the host after every step; `report(step, steps, running loss)` gets them then."""
    done = progress or EpochProgress()
    if progress is not None and not distributed.is_main():
        # The saved running sums are rank 0's share (it alone saves): the others count from here,
        # so the epoch's loss and accuracy average over rank 0's first steps and everyone's rest.
        done = replace(progress, loss_sum=0.0, correct=0, seen=0)
    if done.generator_state is not None:
        generator.set_state(done.generator_state)
        set_rng_states({"torch": done.torch_state, "cuda": done.cuda_state}, device)
    start = time.perf_counter() - done.seconds
    sums = torch.tensor([done.loss_sum, done.correct, done.pseudo_labelled], dtype=torch.float64, device=device)
    bar = progress_bar(total=batches.images, desc=desc, unit="img")
    bar.update(batches.before)
    try:
        for i, batch in enumerate(batches.batches, start=done.step):
            result = step(i, batch)
            sums += result.sums
            done.seen += result.images
            done.unlabeled_seen += result.unlabeled
            done.step = i + 1
            bar.update(result.images)
            if done.step % SYNC_EVERY == 0:
                shown = _postfix(sums, done)
                bar.set_postfix(shown, refresh=False)
                if report is not None:
                    report(done.step, batches.steps, float(shown["loss"]))
            if result.stepped and done.step < batches.steps:
                if stop is not None and stop():
                    raise EpochInterrupted(snapshot(_with_sums(done, sums), generator, device, start), batches.steps)
                if periodic is not None and periodic.due():
                    periodic(snapshot(_with_sums(done, sums), generator, device, start))
    finally:
        bar.close()
    done = _with_sums(done, sums)
    loss_sum, correct, seen = distributed.all_reduce_sums(done.loss_sum, done.correct, done.seen)
    pseudo = done.pseudo_labelled / done.unlabeled_seen if done.unlabeled_seen else None
    return EpochStats(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - start, pseudo)


def _postfix(sums: torch.Tensor, done: EpochProgress) -> dict[str, str]:
    loss_sum, _, pseudo = sums.tolist()
    shown = {"loss": f"{loss_sum / max(done.seen, 1):.4f}"}
    if done.unlabeled_seen:
        shown["pseudo"] = f"{pseudo / done.unlabeled_seen:.2f}"
    return shown


def _with_sums(done: EpochProgress, sums: torch.Tensor) -> EpochProgress:
    loss_sum, correct, pseudo = sums.tolist()
    return replace(done, loss_sum=loss_sum, correct=int(correct), pseudo_labelled=int(pseudo))


def snapshot(done: EpochProgress, generator: torch.Generator, device: torch.device, start: float) -> EpochProgress:
    """A copy of an epoch's progress with the RNG states after its last step (reading them
    draws nothing, so saving never changes the run)."""
    states = rng_states(device)
    return replace(
        done,
        seconds=time.perf_counter() - start,
        generator_state=generator.get_state(),
        torch_state=states["torch"],
        cuda_state=states.get("cuda"),
    )


def supervised_batches(
    setup: RunSetup,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator,
    epoch: int,
    start: int = 0,
) -> EpochBatches:
    """This process's (images, labels) batches of an epoch from step `start` on: shuffled (or
    class-balanced) from the decoded `data`, or read from the run's stream of shards (None)."""
    tc = setup.config.train
    if data is None:
        steps, batches = stream_epoch(setup.stream, setup.train, epoch, stream_workers(setup.config.data), start)
        size = setup.stream.batch_size
        return EpochBatches(steps, steps * size, start * size, batches)
    images, labels = data
    if tc.balanced_sampling:
        order = list(balanced_batch_indices(labels, tc.batch_size, generator=generator))
    else:
        order = list(batch_indices(len(labels), tc.batch_size, shuffle=True, generator=generator))
    order = distributed.shard_batches(order)  # this process's share of each global batch
    sizes = [len(index) for index in order]
    batches = ((images[index], labels[index]) for index in order[start:])
    return EpochBatches(len(order), sum(sizes), sum(sizes[:start]), batches)


def supervised_epoch(
    setup: RunSetup,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    opt: Optimisation,
    epoch: int,
    generator: torch.Generator,
    *,
    desc: str = "train",
    progress: EpochProgress | None = None,
    stop: Callable[[], bool] | None = None,
    periodic: PeriodicSave | None = None,
    report: Callable[[int, int, float], None] | None = None,
) -> EpochStats:
    """One pass over the training set: `data` is the cache's (N, H, W, C) uint8 images and
    labels, or None for the run's stream of shards."""
    train_mode(setup.model, freeze_bn=setup.config.transfer.freeze_bn)
    batches = supervised_batches(setup, data, generator, epoch, progress.step if progress else 0)
    side = epoch_side(setup.preprocessing.img_size, setup.progressive_resize, epoch, setup.config.train.epochs)
    step = supervised_step(setup, opt, generator, batches.steps, side)
    return run_steps(
        batches,
        step,
        generator,
        setup.device,
        desc=desc,
        progress=progress,
        stop=stop,
        periodic=periodic,
        report=report,
    )
