"""Optimizers, learning-rate schedules and the image-size schedule: pure builder functions.

Every schedule is a per-step multiplier of the base rate, run by one LambdaLR: warm-up,
then cosine, step, one-cycle or plateau cuts. One mechanism keeps resume simple (the
scheduler's state is a step count plus, for plateau, three numbers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from imgcls.config import OptimConfig


def parameter_groups(
    model: nn.Module, weight_decay: float, *, lr: float, head: nn.Module | None = None, head_lr_scale: float = 1.0
) -> list[dict]:
    """Weight decay on weights only: decaying norm scales and biases hurts accuracy
    (Goyal et al. 2017; He et al. 2019, "Bag of Tricks"). The classifier head may get
    its own rate when fine-tuning."""
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list] = {}
    # Frozen parameters are included: they get no gradient (and so no update) until a
    # fine-tuning run unfreezes them, and then they must already be in the optimizer.
    for param in model.parameters():
        groups.setdefault((id(param) in head_ids, param.ndim <= 1), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * (head_lr_scale if is_head else 1.0),
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def base_lr(config: OptimConfig, batch_size: int) -> float:
    """The configured rate, scaled by batch_size / 256 under the linear scaling rule."""
    return config.lr * batch_size / 256 if config.scale_lr else config.lr


def build_optimizer(
    model: nn.Module,
    config: OptimConfig,
    *,
    batch_size: int = 256,
    head: nn.Module | None = None,
    head_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    lr = base_lr(config, batch_size)
    groups = parameter_groups(model, config.weight_decay, lr=lr, head=head, head_lr_scale=head_lr_scale)
    # On CUDA one fused kernel updates every parameter, and float16's GradScaler hands it the
    # overflow flag instead of reading it back to the host each step.
    fused = True if next(model.parameters()).is_cuda else None
    if config.name == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=nesterov, fused=fused)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=config.momentum, alpha=0.9, eps=1e-3)
    if config.name == "adabound":
        from imgcls.training.adabound import AdaBound

        return AdaBound(groups, lr=lr, final_lr=config.final_lr, gamma=config.adabound_gamma)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


@dataclass
class PlateauState:
    """ReduceLROnPlateau's rule as a factor of the per-step schedule. torch's own class sets
    the optimizer's rate directly and would fight the warm-up multiplier, so it is folded in here."""

    patience: int
    factor: float
    scale: float = 1.0
    best: float = math.inf
    bad_epochs: int = 0

    def update(self, val_loss: float) -> None:
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "best": None if math.isinf(self.best) else self.best}

    def load(self, values: dict) -> None:
        self.scale, self.bad_epochs = values["scale"], values["bad_epochs"]
        self.best = math.inf if values["best"] is None else values["best"]


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    *,
    steps_per_epoch: int = 1,
    step_epochs: int = 30,
    step_gamma: float = 0.1,
) -> float:
    """Multiplier of the base rate at a step: linear warm-up from 1%, then the schedule."""
    if schedule == "onecycle":
        # The rate part of Smith's one-cycle: cosine up to the peak over 30%, cosine down to ~0.
        peak = max(1, round(0.3 * total_steps))
        if step < peak:
            return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * step / peak))
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - peak) / max(1, total_steps - peak))))
    if step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    if schedule in ("constant", "plateau"):
        return 1.0
    if schedule == "step":
        return step_gamma ** (step // (steps_per_epoch * step_epochs))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_schedule(
    optimizer: torch.optim.Optimizer, config: OptimConfig, *, steps_per_epoch: int, epochs: int
) -> tuple[torch.optim.lr_scheduler.LambdaLR, PlateauState | None]:
    """A per-step schedule (call .step() after every optimizer step) and, for the plateau
    schedule, the state to update once per epoch with the validation loss."""
    total = steps_per_epoch * epochs
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    plateau = PlateauState(config.plateau_patience, config.plateau_factor) if config.schedule == "plateau" else None

    def factor(step: int) -> float:
        f = lr_factor(
            step,
            total,
            warmup,
            config.schedule,
            steps_per_epoch=steps_per_epoch,
            step_epochs=config.step_epochs,
            step_gamma=config.step_gamma,
        )
        return f * (plateau.scale if plateau is not None else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), plateau


def epoch_side(img_size: int, start: float, epoch: int, epochs: int) -> int:
    """The side epoch `epoch` (1-based) of `epochs` trains at under progressive resizing (fast.ai's,
    FFCV's resolution schedule): `start` x img_size in the first epoch, growing linearly to
    img_size in the last, in steps of 16 px. Early epochs learn coarse features, which half the
    side (a quarter of the arithmetic) shows as well; the last ones fit the full-size detail
    that validation and prediction see."""
    if not start or epochs <= 1:
        return img_size
    side = img_size * (start + (1 - start) * (epoch - 1) / (epochs - 1))
    return min(img_size, max(16, round(side / 16) * 16))
