"""The learning-rate range test (Smith 2017): raise the rate exponentially over a few hundred
steps, watch the training loss, and suggest a rate a little below where it falls fastest."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.config import Config
from imgcls.data.augment import augment_batch
from imgcls.data.loader import batch_indices, cache_tensors
from imgcls.data.preprocess import to_model_input
from imgcls.device import autocast, to_device
from imgcls.errors import ConfigError
from imgcls.training.probe import train_mode
from imgcls.training.run import prepare

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
    torch.manual_seed(config.train.seed)
    run = prepare(config)
    if run.stream is not None:
        raise ConfigError("lr-find trains from decoded images; set data.stream=never for it.")
    images, labels = cache_tensors(run.train)
    generator = torch.Generator().manual_seed(config.train.seed)
    for group in run.optimizer.param_groups:
        group["lr"] = start
    factor = (end / start) ** (1 / max(1, steps - 1))
    lrs, losses, smoothed, best = [], [], 0.0, math.inf
    model, tc = run.model, config.train
    train_mode(model, freeze_bn=config.transfer.freeze_bn)
    step = 0
    while step < steps:
        for index in batch_indices(len(labels), tc.batch_size, shuffle=True, generator=generator):
            batch = to_device(augment_batch(images[index], config.augment, generator), run.device)
            x = to_model_input(batch, run.preprocessing, channels_last=tc.channels_last)
            with autocast(run.autocast_dtype, x.device):
                loss = run.loss_fn(model(x).float(), to_device(labels[index], run.device))
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            lr = run.optimizer.param_groups[0]["lr"]
            smoothed = 0.98 * smoothed + 0.02 * loss.item()
            value = smoothed / (1 - 0.98 ** (step + 1))  # bias-corrected running mean
            lrs.append(lr)
            losses.append(value)
            best = min(best, value)
            step += 1
            if step >= steps or not math.isfinite(value) or value > 4 * best:
                return LrFinderResult(lrs, losses, suggest_lr(lrs, losses))
            for group in run.optimizer.param_groups:
                group["lr"] = lr * factor
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
