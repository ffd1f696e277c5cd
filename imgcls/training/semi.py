"""Semi-supervised training: a few labelled images plus a folder of unlabeled ones.

`imgcls train DATA --unlabeled DIR` supplies this module's step to the epochs every run goes
through (imgcls.training.epochs); everything else (prepare, evaluation, best/last
checkpoints, metrics.json, report) is the normal run's.

Two methods (config section `semi`):
- fixmatch (Sohn et al. 2020): the model's prediction on a weak view of an unlabeled image
  (the run's flip + shift) becomes its label when its confidence reaches `threshold` (0.95),
  and the model learns that label on a strong view of the same image (weak + RandAugment +
  Cutout of half the side). Each step takes a labelled batch and `mu` times as many
  unlabeled images, in one forward pass so batch norm sees both.
- pseudo (Lee 2013): plain pseudo-labelling; confident predictions on the weak view are
  learnt on that same view.

An epoch is one pass over the unlabeled images (labelled batches cycle as often as needed),
so the learning-rate schedule is built for that number of steps. Ctrl-C stops after the
current step and saves the epoch's progress, as periodic saves do (train.checkpoint_minutes);
`--resume` finishes that epoch exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
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
from imgcls.device import autocast, to_device
from imgcls.errors import DataError
from imgcls.training.epochs import FitResult, finish_run, train_epochs
from imgcls.training.loop import EpochBatches, EpochStats, run_steps
from imgcls.training.probe import train_mode
from imgcls.training.run import Optimisation, RunSetup, build_optimisation, prepare_setup
from imgcls.training.state import EpochProgress, PeriodicSave, fresh_start, resume_point
from imgcls.training.steps import Step, StepResult, optimizer_step, step_sums
from imgcls.training.tracking import open_tracker

log = logging.getLogger(__name__)

STRONG_CUTOUT = 0.5  # FixMatch's Cutout: a square of half the image side


def select_pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels, mask): each row's most probable class, and whether its probability reaches threshold."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, confidence >= threshold


def strong_transform() -> v2.RandAugment:
    """RandAugment's two random operations per image (torchvision's default magnitude 9 of 31)."""
    return v2.RandAugment(num_ops=2)


def weak_view(setup: RunSetup, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The run's own augmentation (flip + shift by default), as labelled images get it."""
    return augment_batch(apply_per_image(images, setup.per_image), setup.config.augment, generator)


def strong_view(weak: torch.Tensor, generator: torch.Generator, transform=None) -> torch.Tensor:
    """A weak view made hard to recognise: RandAugment, then Cutout of half the side."""
    return cutout(apply_per_image(weak, transform or strong_transform()), STRONG_CUTOUT, generator)


def decode_unlabeled(config: Config, setup: RunSetup) -> ImageCache:
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
        channels=setup.train.channels,
        max_pixels=data.max_pixels,
        workers=data.decode_workers,
        desc="decode unlabeled",
    )
    overlap = {str(s.path.resolve()) for s in setup.sources.val} & {str(Path(p).resolve()) for p in cache.paths}
    if overlap:
        log.warning(
            "%d unlabeled image(s) are also validation images; validation accuracy will be optimistic", len(overlap)
        )
    log.info("unlabeled: %d images from %s (%d skipped)", len(cache), folder, len(cache.skipped))
    return cache


def semi_batches(
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabeled: torch.Tensor,
    batch_size: int,
    mu: int,
    generator: torch.Generator,
    start: int = 0,
) -> EpochBatches:
    """An epoch's ((labelled images, labels), unlabeled images) batches from step `start` on:
    one pass over the unlabeled images, the labelled ones cycling through reshuffled passes."""
    images, labels = labelled
    batch = min(batch_size, len(labels))
    unl_batch = mu * batch
    steps = semi_steps(len(unlabeled), len(labels), batch_size, mu)
    unl_order = torch.randperm(len(unlabeled), generator=generator)
    passes = -(-steps * batch // len(labels))
    lab_order = torch.cat([torch.randperm(len(labels), generator=generator) for _ in range(passes)])

    def batches():
        for step in range(start, steps):
            li = lab_order[step * batch : (step + 1) * batch]
            yield (images[li], labels[li]), unlabeled[unl_order[step * unl_batch : (step + 1) * unl_batch]]

    return EpochBatches(steps, steps * batch, start * batch, batches())


def semi_step(setup: RunSetup, opt: Optimisation, generator: torch.Generator) -> Step:
    """A labelled batch and mu times as many unlabeled images in one forward pass, so batch
    norm sees both; the unlabeled images learn the confident predictions on their weak view."""
    semi, tc = setup.config.semi, setup.config.train
    transform = strong_transform()

    def step(i: int, batch) -> StepResult:
        (lab_images, lab_labels), unl_images = batch
        x_lab = weak_view(setup, lab_images, generator)
        weak = weak_view(setup, unl_images, generator)
        views = [x_lab, weak] + ([strong_view(weak, generator, transform)] if semi.method == "fixmatch" else [])
        x = to_model_input(
            to_device(torch.cat(views), setup.device), setup.preprocessing, channels_last=tc.channels_last
        )
        targets = to_device(lab_labels, setup.device)
        n_lab, n_unl = len(lab_labels), len(unl_images)
        with autocast(setup.autocast_dtype, x.device):
            logits = setup.model(x).float()
        lab_logits, weak_logits = logits[:n_lab], logits[n_lab : n_lab + n_unl]
        student = logits[n_lab + n_unl :] if semi.method == "fixmatch" else weak_logits
        pseudo, mask = select_pseudo_labels(weak_logits, semi.threshold)
        unl_loss = (nn.functional.cross_entropy(student, pseudo, reduction="none") * mask).mean()
        loss = setup.loss_fn(lab_logits, targets) + semi.weight * unl_loss
        opt.scaler.scale(loss).backward()
        optimizer_step(opt, setup.model, setup.config.optim.clip_grad_norm)
        correct = (lab_logits.argmax(1) == targets).sum()
        return StepResult(step_sums(loss, n_lab, correct, mask.sum()), n_lab, unlabeled=n_unl)

    return step


def semi_epoch(
    setup: RunSetup,
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabeled: torch.Tensor,
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
    """One pass over the unlabeled images in steps of (batch_size labelled, mu * batch_size
    unlabeled), through imgcls.training.loop.run_steps."""
    train_mode(setup.model, freeze_bn=setup.config.transfer.freeze_bn)
    semi, tc = setup.config.semi, setup.config.train
    batches = semi_batches(labelled, unlabeled, tc.batch_size, semi.mu, generator, progress.step if progress else 0)
    step = semi_step(setup, opt, generator)
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


def semi_steps(n_unlabeled: int, n_labelled: int, batch_size: int, mu: int) -> int:
    return max(1, n_unlabeled // (mu * min(batch_size, n_labelled)))


def fit_semi_run(config: Config, run_dir: Path, resume: bool, started: float) -> FitResult:
    """`fit` with unlabeled images: called by imgcls.training.fit._fit when config.semi.unlabeled is set."""
    tc = config.train
    tracker = open_tracker(tc.log, run_dir)  # before decoding: a missing extra fails at once
    setup = prepare_setup(config)
    unlabeled = decode_unlabeled(config, setup)
    setup.train.skipped.extend(unlabeled.skipped)  # metrics.json's skipped_files lists them with the labelled ones
    steps = semi_steps(len(unlabeled), len(setup.train), tc.batch_size, config.semi.mu)
    opt = build_optimisation(setup, steps)  # an epoch is one pass over the unlabeled images
    log.info(
        "semi-supervised (%s): %d labelled + %d unlabeled images, mu %d, threshold %.2f; %d steps per epoch "
        "(one pass over the unlabeled images), %d in the whole run",
        config.semi.method,
        len(setup.train),
        len(unlabeled),
        config.semi.mu,
        config.semi.threshold,
        steps,
        steps * tc.epochs,
    )
    start = resume_point(run_dir, setup, opt) if resume else fresh_start()
    labelled, val = cache_tensors(setup.train), cache_tensors(setup.val)
    one_epoch = functools.partial(semi_epoch, setup, labelled, torch.from_numpy(unlabeled.images))
    try:
        last = train_epochs(run_dir, setup, opt, start, val, one_epoch, tracker=tracker)
        return finish_run(run_dir, setup, opt, start.history, val, started, tracker, labelled[0], last)
    finally:
        tracker.close()
