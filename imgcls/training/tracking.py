"""A live view of a run: `--log tensorboard` writes TensorBoard event files into
RUN_DIR/tensorboard (open them with `tensorboard --logdir RUN_DIR`).

Written: the running training loss and the learning rate every few steps; per epoch the
training and validation loss and score, images per second, and a grid of validation images
with their predicted and true labels; at the end the final metrics and the confusion matrix.
torch.utils.tensorboard writes the files (the `tensorboard` package, the `[track]` extra);
only the first process of a distributed run writes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.data.preprocess import Preprocessing
from imgcls.extras import require
from imgcls.inference.batched import batched_logits
from imgcls.report.figures import drawing
from imgcls.training import distributed

GRID = 16  # validation images shown per epoch


@dataclass(frozen=True)
class Tracker:
    """Where a run's live numbers go; a Tracker with no writer records nothing."""

    writer: object | None = None  # torch.utils.tensorboard.SummaryWriter

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, row: dict, images_per_second: float, score: str) -> None:
        if self.writer is None:
            return
        epoch = row["epoch"]
        self.writer.add_scalars("epoch/loss", {"train": row["train_loss"], "val": row["val_loss"]}, epoch)
        self.writer.add_scalars("epoch/" + score, {"train": row["train_acc"], "val": row["val_acc"]}, epoch)
        self.writer.add_scalar("epoch/lr", row["lr"], epoch)
        self.writer.add_scalar("epoch/images_per_second", images_per_second, epoch)

    def predictions(self, epoch: int, model: nn.Module, val: tuple[torch.Tensor, torch.Tensor], classes, pre, device):
        """A grid of the first GRID validation images, titled predicted (true) class."""
        if self.writer is not None and len(val[0]):
            with _drawing():
                self.writer.add_figure("val/predictions", _prediction_grid(model, *val, classes, pre, device), epoch)

    def finish(self, metrics: dict, classes) -> None:
        if self.writer is None:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for name, value in scalars.items():
            self.writer.add_scalar("final/" + name, value, 0)
        if "confusion_matrix" in metrics:
            with _drawing():
                figure = _confusion_figure(metrics["confusion_matrix"], classes)
                self.writer.add_figure("final/confusion_matrix", figure)
        self.close()

    def close(self) -> None:
        """Flush the event file (again: harmless); a run that fails keeps what it wrote."""
        if self.writer is not None:
            self.writer.close()


def open_tracker(kind: str, run_dir: Path) -> Tracker:
    """The run's tracker: TensorBoard event files in run_dir/tensorboard, or none."""
    if kind == "none" or not distributed.is_main():
        return Tracker()
    tensorboard = require("torch.utils.tensorboard", "track")
    return Tracker(tensorboard.SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard")))


@contextlib.contextmanager
def _drawing():
    """Class names in any script, as the report draws them (a missing glyph draws a box)."""
    with warnings.catch_warnings(), drawing():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        yield


def _prediction_grid(model, images, labels, classes, pre: Preprocessing, device):
    from matplotlib.figure import Figure

    shown, truth = images[:GRID], labels[:GRID]
    was_training = model.training
    model.eval()
    try:
        logits = batched_logits(model, shown, pre, batch_size=GRID, channels_last=False, device=device)
    finally:
        model.train(was_training)
    cols = 4
    rows = -(-len(shown) // cols)
    figure = Figure(figsize=(2 * cols, 2.2 * rows), layout="constrained")
    for i, axes in enumerate(figure.subplots(rows, cols, squeeze=False).flat):
        axes.axis("off")
        if i >= len(shown):
            continue
        pixels = shown[i].numpy()
        axes.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray" if pixels.shape[-1] == 1 else None)
        if truth.ndim == 1:
            predicted, true = classes[int(logits[i].argmax())], classes[int(truth[i])]
            axes.set_title(f"{predicted} ({true})", fontsize=8, color="green" if predicted == true else "red")
        else:  # multi-label: the labels predicted at probability 0.5
            predicted = [c for c, p in zip(classes, logits[i].sigmoid().tolist(), strict=True) if p >= 0.5]
            axes.set_title(", ".join(predicted) or "-", fontsize=7)
    return figure


def _confusion_figure(matrix, classes):
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    side = max(4, 0.5 * len(classes) + 2)
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
    axes.set_xticklabels(classes, rotation=90)
    axes.set_yticklabels(classes)
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", fontsize=7)
    return figure
