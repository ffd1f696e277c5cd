"""The supervised step: augment a batch, forward, loss (with mixing and distillation), backward,
and the optimizer step with clipping, loss scaling, schedule and EMA.

Supervised epochs (imgcls.training.loop) and the learning-rate range test
(imgcls.training.lr_find) take their steps from `supervised_step`; the semi-supervised step
(imgcls.training.semi) shares `optimizer_step`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.data.augment import apply_per_image, augment_batch, mix_batch, mixing_enabled
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.device import autocast, constant, to_device
from imgcls.training.losses import correct_predictions, distillation_loss
from imgcls.training.run import Optimisation, RunSetup


@dataclass(frozen=True)
class StepResult:
    """What one step adds to its epoch's running sums."""

    sums: torch.Tensor  # (3,) float64 on the device: loss x images, correct answers, pseudo-labelled images
    images: int  # labelled images in the step
    unlabeled: int = 0
    stepped: bool = True  # the optimizer stepped (false on a batch whose gradients accumulate)


Step = Callable[[int, tuple[torch.Tensor, torch.Tensor]], StepResult]


def step_sums(
    loss: torch.Tensor, images: int, correct: torch.Tensor, pseudo: torch.Tensor | None = None
) -> torch.Tensor:
    """The (3,) running-sum increment of a step, built on the device without reading it back."""
    zero = torch.zeros((), dtype=torch.float64, device=loss.device)
    parts = [loss.detach().double() * images, correct.double(), zero if pseudo is None else pseudo.double()]
    return torch.stack(parts)


def teacher_input(x: torch.Tensor, student: Preprocessing, teacher: Preprocessing) -> torch.Tensor:
    """Re-normalise the student's (possibly mixed) input with the teacher's mean and std."""
    if (student.mean, student.std) == (teacher.mean, teacher.std):
        return x

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return constant(tuple(values), x.device).view(1, -1, 1, 1)

    return (x * column(student.std) + column(student.mean) - column(teacher.mean)) / column(teacher.std)


def supervised_step(
    setup: RunSetup, opt: Optimisation, generator: torch.Generator, steps: int, side: int | None = None
) -> Step:
    """The step of an epoch of `steps` batches: batch i's gradients accumulate until every
    train.accumulate-th batch (and the last) steps the optimizer. Augmentation draws from
    `generator` on the CPU; the batch moves to the device as uint8 (a quarter of the float32
    bytes) and is normalised there; with `side` below the run's image size it is resized to it."""
    tc, augment = setup.config.train, setup.config.augment
    classes = len(setup.sources.classes)
    smaller = side is not None and side != setup.preprocessing.img_size

    def model_input(images: torch.Tensor) -> torch.Tensor:
        augmented = augment_batch(apply_per_image(images, setup.per_image), augment, generator)
        x = to_model_input(to_device(augmented, setup.device), setup.preprocessing, channels_last=tc.channels_last)
        if smaller:  # antialiased, as the decoder resizes: the small epochs see what a smaller photo shows
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last if tc.channels_last else torch.contiguous_format)
        return x

    def step(i: int, batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        images, labels = batch
        hard = to_device(labels, setup.device)
        x, target = model_input(images), hard
        if setup.two_view_loss is not None:  # a second, independently augmented view of each image
            x, target = torch.cat([x, model_input(images)]), hard.repeat(2)
        if mixing_enabled(augment):
            x, target = mix_batch(x, hard, classes, augment, generator)
        stepped = (i + 1) % tc.accumulate == 0 or i + 1 == steps
        logits, loss = forward_backward(setup, opt, x, target, sync=stepped)
        if stepped:
            optimizer_step(opt, setup.model, setup.config.optim.clip_grad_norm)
        # correct answers against the unmixed labels (of the first view)
        correct = correct_predictions(logits[: len(hard)], hard)
        return StepResult(step_sums(loss, len(hard), correct), len(hard), stepped=stepped)

    return step


def forward_backward(
    setup: RunSetup, opt: Optimisation, x: torch.Tensor, target: torch.Tensor, *, sync: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of one batch; its gradients accumulate (scaled for float16). With several
    processes, DDP averages them only on the batch before an optimizer step (`sync`): the
    accumulated sum is the same, with one all-reduce per step instead of one per batch."""
    distill = setup.config.distill
    forward = opt.ddp or setup.model
    with opt.ddp.no_sync() if opt.ddp is not None and not sync else contextlib.nullcontext():
        with autocast(setup.autocast_dtype, x.device):
            if setup.two_view_loss is not None:
                logits, embeddings = (out.float() for out in forward(x, with_embedding=True))
            else:
                logits = forward(x).float()
            teacher_logits = None
            if setup.teacher is not None:
                with torch.no_grad():
                    teacher_x = teacher_input(x, setup.preprocessing, setup.teacher.preprocessing)
                    teacher_logits = setup.teacher.model(teacher_x).float()
        loss = setup.loss_fn(logits, target)  # in float32, outside autocast
        if setup.two_view_loss is not None:
            loss = loss + setup.two_view_loss(embeddings, target)
        if teacher_logits is not None:
            loss = distillation_loss(logits, teacher_logits, loss, alpha=distill.alpha, temperature=distill.temperature)
        opt.scaler.scale(loss / setup.config.train.accumulate).backward()
    return logits, loss


def optimizer_step(opt: Optimisation, model: nn.Module, clip_grad_norm: float) -> None:
    """Clip (on the true gradients: unscaled first), step, update the loss scale, schedule, EMA.
    With float16 the scaler skips a step whose gradients overflowed and lowers the scale."""
    if clip_grad_norm:
        opt.scaler.unscale_(opt.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # A first float16 step skipped for overflow makes PyTorch warn that the schedule moved
        # before the optimizer did; the schedule counts steps taken or skipped alike.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
        opt.scheduler.step()
    if opt.ema is not None:
        opt.ema.update(model, step=opt.scheduler.last_epoch)
