"""The learning-rate range test (Smith 2017): raise the rate exponentially over a few hundred
steps, watch the training loss, and suggest a rate a little below where it falls fastest."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from imgcls.config import Config
from imgcls.data.loader import cache_tensors
from imgcls.errors import ConfigError
from imgcls.training.loop import run_steps, supervised_batches
from imgcls.training.probe import train_mode
from imgcls.training.run import prepare
from imgcls.training.state import EpochInterrupted
from imgcls.training.steps import Step, StepResult, supervised_step

log = logging.getLogger(__name__)


@dataclass
class LrFinderResult:
    lrs: list[float]
    losses: list[float]  # exponentially smoothed
    suggestion: float


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The rate of the steepest descent of the smoothed loss (against log lr)."""
    if len(losses) < 3:
        return lrs[0]
    slopes = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slopes))])


def find_lr(config: Config, *, start: float = 1e-6, end: float = 1.0, steps: int = 200) -> LrFinderResult:
    """Up to `steps` optimizer steps of the run's own supervised step (its accumulation,
    per-image augmentation and mixing included) under an exponential schedule from `start` to
    `end`; stops early when the smoothed loss is no longer finite or passes 4x its best."""
    torch.manual_seed(config.train.seed)
    setup, opt = prepare(config)
    if setup.stream is not None:
        raise ConfigError("lr-find trains from decoded images; set data.stream=never for it.")
    for group in opt.optimizer.param_groups:
        group["lr"] = group["initial_lr"] = start
    factor = (end / start) ** (1 / max(1, steps - 1))
    opt = replace(opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda k: factor**k))
    data = cache_tensors(setup.train)
    generator = torch.Generator().manual_seed(config.train.seed)
    train_mode(setup.model, freeze_bn=config.transfer.freeze_bn)
    lrs, losses = [], []
    smoothed, pending, pending_images = 0.0, 0.0, 0  # pending: loss x images since the last optimizer step

    def finished() -> bool:
        return len(lrs) >= steps or bool(losses) and (not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses))

    def recording(supervised: Step) -> Step:
        def step(i: int, batch) -> StepResult:
            nonlocal smoothed, pending, pending_images
            lr = opt.optimizer.param_groups[0]["lr"]
            result = supervised(i, batch)
            pending, pending_images = pending + result.sums[0].item(), pending_images + result.images
            if result.stepped:
                smoothed = 0.98 * smoothed + 0.02 * pending / pending_images
                losses.append(smoothed / (1 - 0.98 ** (len(losses) + 1)))  # bias-corrected running mean
                lrs.append(lr)
                pending, pending_images = 0.0, 0
            return result

        return step

    epoch = 0
    while not finished():
        epoch += 1
        batches = supervised_batches(setup, data, generator, epoch)
        step = recording(supervised_step(setup, opt, generator, batches.steps))
        try:
            run_steps(batches, step, generator, setup.device, desc="lr-find", stop=finished)
        except EpochInterrupted:  # `finished` stopped it inside an epoch
            break
    return LrFinderResult(lrs, losses, suggest_lr(lrs, losses))


def plot_lr_finder(result: LrFinderResult, path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(result.lrs, result.losses)
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested {result.suggestion:.2g}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate range test")
    low, first = min(result.losses), result.losses[0]
    if math.isfinite(first):  # keep the divergence at the end from flattening the curve
        axes.set_ylim(low - 0.05 * abs(low), max(first, low) * 1.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
