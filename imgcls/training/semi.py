"""Semi-supervised training: a few labelled images plus a folder of unlabeled ones.

`imgcls train DATA --unlabeled DIR` runs this loop instead of train_one_epoch; everything
else (prepare, evaluation, best/last checkpoints, metrics.json, report) is the normal run's.

Two methods (config section `semi`):
- fixmatch (Sohn et al. 2020): the model's prediction on a weak view of an unlabeled image
  (the run's flip + shift) becomes its label when its confidence reaches `threshold` (0.95),
  and the model learns that label on a strong view of the same image (weak + RandAugment +
  Cutout of half the side). Each step takes a labelled batch and `mu` times as many
  unlabeled images, in one forward pass so batch norm sees both.
- pseudo (Lee 2013): plain pseudo-labelling; confident predictions on the weak view are
  learnt on that same view.

An epoch is one pass over the unlabeled images (labelled batches cycle as often as needed),
so the learning-rate schedule is rebuilt for that number of steps. Ctrl-C stops after the
current step and saves the epoch's progress, as periodic saves do (train.checkpoint_minutes);
`--resume` finishes that epoch exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from imgcls.config import Config
from imgcls.data.augment import apply_per_image, augment_batch, cutout
from imgcls.data.cache import ImageCache, build_cache
from imgcls.data.loader import cache_tensors
from imgcls.data.preprocess import to_model_input
from imgcls.data.sources import Sample, list_images
from imgcls.device import autocast, set_rng_states, to_device
from imgcls.errors import DataError
from imgcls.progress import progress_bar
from imgcls.training.loop import (
    SYNC_EVERY,
    EpochStats,
    FitResult,
    epoch_seed,
    optimizer_step,
    save_epoch,
    snapshot,
)
from imgcls.training.optim import build_schedule
from imgcls.training.outputs import write_run_report
from imgcls.training.probe import train_mode
from imgcls.training.run import TrainingRun, prepare
from imgcls.training.state import (
    EpochInterrupted,
    EpochProgress,
    PeriodicSave,
    history_row,
    restore,
    stop_on_sigint,
    stopped,
    train_resumably,
)
from imgcls.training.validate import evaluate, final_metrics

log = logging.getLogger(__name__)

STRONG_CUTOUT = 0.5  # FixMatch's Cutout: a square of half the image side


@dataclass
class SemiStats(EpochStats):
    mask_rate: float = 0.0  # share of unlabeled images whose prediction passed the threshold


def select_pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels, mask): each row's most probable class, and whether its probability reaches threshold."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, confidence >= threshold


def strong_transform() -> v2.RandAugment:
    """RandAugment's two random operations per image (torchvision's default magnitude 9 of 31)."""
    return v2.RandAugment(num_ops=2)


def weak_view(run: TrainingRun, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The run's own augmentation (flip + shift by default), as labelled images get it."""
    return augment_batch(apply_per_image(images, run.per_image), run.config.augment, generator)


def strong_view(weak: torch.Tensor, generator: torch.Generator, transform=None) -> torch.Tensor:
    """A weak view made hard to recognise: RandAugment, then Cutout of half the side."""
    return cutout(apply_per_image(weak, transform or strong_transform()), STRONG_CUTOUT, generator)


def decode_unlabeled(config: Config, run: TrainingRun) -> ImageCache:
    """The unlabeled images, decoded like the labelled ones; broken files are skipped and counted."""
    folder = Path(config.semi.unlabeled)
    if not folder.is_dir():
        raise DataError(f"unlabeled folder {folder} does not exist. Give a folder of images (any sub-folders).")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder} holds no images to learn from without labels.")
    if config.semi.max_unlabeled and len(paths) > config.semi.max_unlabeled:
        paths = sorted(random.Random(config.train.seed).sample(paths, config.semi.max_unlabeled))
    data = config.data
    cache = build_cache(
        [Sample(p, -1) for p in paths],
        size=data.img_size,
        resize=data.resize,
        channels=run.train.channels,
        max_pixels=data.max_pixels,
        workers=data.decode_workers,
        desc="decode unlabeled",
    )
    overlap = {str(s.path.resolve()) for s in run.sources.val} & {str(Path(p).resolve()) for p in cache.paths}
    if overlap:
        log.warning(
            "%d unlabeled image(s) are also validation images; validation accuracy will be optimistic", len(overlap)
        )
    log.info("unlabeled: %d images from %s (%d skipped)", len(cache), folder, len(cache.skipped))
    return cache


def train_one_epoch_semi(
    run: TrainingRun,
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabeled: torch.Tensor,
    generator: torch.Generator,
    desc: str = "train",
    *,
    progress: EpochProgress | None = None,
    stop: Callable[[], bool] | None = None,
    periodic: PeriodicSave | None = None,
) -> SemiStats:
    """One pass over the unlabeled images in steps of (batch_size labelled, mu * batch_size
    unlabeled); `progress`, `stop` and `periodic` as in imgcls.training.fit.train_one_epoch."""
    config, model = run.config, run.model
    semi, tc = config.semi, config.train
    images, labels = labelled
    batch, unl_batch = min(tc.batch_size, len(labels)), semi.mu * min(tc.batch_size, len(labels))
    steps = semi_steps(len(unlabeled), len(labels), tc.batch_size, semi.mu)
    unl_order = torch.randperm(len(unlabeled), generator=generator)
    passes = -(-steps * batch // len(labels))  # labelled batches cycle through reshuffled passes
    lab_order = torch.cat([torch.randperm(len(labels), generator=generator) for _ in range(passes)])
    transform = strong_transform()
    train_mode(model, freeze_bn=config.transfer.freeze_bn)
    done = progress or EpochProgress()
    if done.generator_state is not None:  # the orders are drawn above; the draws go on from here
        generator.set_state(done.generator_state)
        set_rng_states({"torch": done.torch_state, "cuda": done.cuda_state}, run.device)
    start = time.perf_counter() - done.seconds
    # loss sum, correct answers, pseudo-labelled images: kept on the device, read every SYNC_EVERY steps
    sums = torch.tensor([done.loss_sum, done.correct, done.pseudo_labelled], dtype=torch.float64, device=run.device)
    bar = progress_bar(total=steps, desc=desc, unit="step")
    bar.update(done.step)
    try:
        for step in range(done.step, steps):
            li = lab_order[step * batch : (step + 1) * batch]
            ui = unl_order[step * unl_batch : (step + 1) * unl_batch]
            x_lab = weak_view(run, images[li], generator)
            weak = weak_view(run, unlabeled[ui], generator)
            views = [x_lab, weak] + ([strong_view(weak, generator, transform)] if semi.method == "fixmatch" else [])
            x = to_model_input(
                to_device(torch.cat(views), run.device), run.preprocessing, channels_last=tc.channels_last
            )
            targets = to_device(labels[li], run.device)
            with autocast(run.autocast_dtype, x.device):
                logits = model(x).float()
            lab_logits, weak_logits = logits[: len(li)], logits[len(li) : len(li) + len(ui)]
            student = logits[len(li) + len(ui) :] if semi.method == "fixmatch" else weak_logits
            pseudo, mask = select_pseudo_labels(weak_logits, semi.threshold)
            unl_loss = (nn.functional.cross_entropy(student, pseudo, reduction="none") * mask).mean()
            loss = run.loss_fn(lab_logits, targets) + semi.weight * unl_loss
            run.scaler.scale(loss).backward()
            optimizer_step(run)
            sums[0] += loss.detach().double() * len(li)
            sums[1] += (lab_logits.argmax(1) == targets).sum()
            sums[2] += mask.sum()
            done.seen, done.unlabeled_seen = done.seen + len(li), done.unlabeled_seen + len(ui)
            done.step = step + 1
            bar.update(1)
            if done.step % SYNC_EVERY == 0:
                loss_sum, _, pseudo = sums.tolist()
                bar.set_postfix(
                    loss=f"{loss_sum / done.seen:.4f}", pseudo=f"{pseudo / done.unlabeled_seen:.2f}", refresh=False
                )
            if done.step < steps:
                if stop is not None and stop():
                    raise EpochInterrupted(snapshot(_with_sums(done, sums), generator, run.device, start), steps)
                if periodic is not None and periodic.due():
                    periodic(snapshot(_with_sums(done, sums), generator, run.device, start))
    finally:
        bar.close()
    done = _with_sums(done, sums)
    seen = max(done.seen, 1)
    return SemiStats(
        done.loss_sum / seen,
        done.correct / seen,
        done.seen,
        time.perf_counter() - start,
        done.pseudo_labelled / max(done.unlabeled_seen, 1),
    )


def _with_sums(done: EpochProgress, sums: torch.Tensor) -> EpochProgress:
    loss_sum, correct, pseudo = sums.tolist()
    return replace(done, loss_sum=loss_sum, correct=int(correct), pseudo_labelled=int(pseudo))


def semi_steps(n_unlabeled: int, n_labelled: int, batch_size: int, mu: int) -> int:
    return max(1, n_unlabeled // (mu * min(batch_size, n_labelled)))


def fit_semi_run(config: Config, run_dir: Path, resume: bool, started: float) -> FitResult:
    """`fit` with unlabeled images: called by imgcls.training.fit._fit when config.semi.unlabeled is set."""
    tc = config.train
    run = prepare(config)
    unlabeled = decode_unlabeled(config, run)
    run.train.skipped.extend(unlabeled.skipped)  # metrics.json's skipped_files lists them with the labelled ones
    steps = semi_steps(len(unlabeled), len(run.train), tc.batch_size, config.semi.mu)
    run.scheduler, run.plateau = build_schedule(run.optimizer, config.optim, steps_per_epoch=steps, epochs=tc.epochs)
    log.info(
        "semi-supervised (%s): %d labelled + %d unlabeled images, mu %d, threshold %.2f; %d steps per epoch "
        "(one pass over the unlabeled images), %d in the whole run",
        config.semi.method,
        len(run.train),
        len(unlabeled),
        config.semi.mu,
        config.semi.threshold,
        steps,
        steps * tc.epochs,
    )
    history, start_epoch, best_acc, partial = [], 1, -1.0, None
    if resume:
        state, partial = restore(run_dir / "last.safetensors", run)
        history, start_epoch, best_acc = state["history"], state["epoch"] + 1, state["best_val_acc"]
    labelled, (val_x, val_y) = cache_tensors(run.train), cache_tensors(run.val)
    unl_x = torch.from_numpy(unlabeled.images)
    with stop_on_sigint() as stop:
        for epoch in range(start_epoch, tc.epochs + 1):
            if partial is None:
                torch.manual_seed(epoch_seed(tc.seed, epoch))  # RandAugment's draws come from torch's global RNG
                partial = EpochProgress(lr=run.optimizer.param_groups[0]["lr"])
            lr = partial.lr
            generator = torch.Generator().manual_seed(epoch_seed(tc.seed, epoch))
            one_epoch = functools.partial(
                train_one_epoch_semi,
                run,
                labelled,
                unl_x,
                generator,
                desc=f"epoch {epoch}/{tc.epochs}",
                progress=partial,
                stop=stop,
            )
            stats = train_resumably(run_dir, run, epoch, history, best_acc, one_epoch)
            partial = None
            val_loss, val_acc, _ = evaluate(
                run.eval_model,
                val_x,
                val_y,
                run.preprocessing,
                batch_size=tc.eval_batch_size,
                autocast_dtype=run.autocast_dtype,
                channels_last=tc.channels_last,
                device=run.device,
            )
            if run.plateau is not None:
                run.plateau.update(val_loss)
            history.append(history_row(epoch, (stats.loss, stats.accuracy), (val_loss, val_acc), lr, stats.seconds))
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  pseudo-labelled %.1f%%  %.1f s",
                epoch,
                tc.epochs,
                stats.loss,
                stats.accuracy,
                val_loss,
                val_acc,
                100 * stats.mask_rate,
                stats.seconds,
            )
            best_acc = save_epoch(run_dir, run, history, best_acc)
            if stop() and epoch < tc.epochs:
                stopped(run_dir, f"after epoch {epoch}")
    metrics, probs = final_metrics(run_dir, run, val_x, val_y)
    write_run_report(run_dir, run, metrics, history, time.perf_counter() - started, probs)
    return FitResult(run_dir, metrics, history, run_dir / "best.safetensors")
