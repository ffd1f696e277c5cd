"""What a training run keeps to survive an interruption: last.safetensors and history.csv.

last.safetensors holds the model, EMA, optimizer and schedule state after the last finished
epoch; when Ctrl-C stopped training inside an epoch, also that epoch's running sums and the
states of both RNGs it draws from (the epoch's generator for shuffles, flips and mixing;
torch's global RNG for dropout and torchvision's per-image draws). Every file is written
atomically (temporary file, fsync, rename), so a kill at any moment leaves the previous one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from imgcls import checkpoint as ckpt
from imgcls import files
from imgcls.errors import CheckpointError, TrainingDivergedError
from imgcls.training import distributed
from imgcls.training.run import Optimisation, RunSetup, eval_model

log = logging.getLogger(__name__)
Stats = TypeVar("Stats")  # what an epoch function returns (EpochStats, SemiStats)

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
EMA_PREFIX = "ema."


def history_row(epoch: int, train: tuple[float, float], val: tuple[float, float], lr: float, seconds: float) -> dict:
    """One row of history.csv: (loss, accuracy) of train and val, rounded as the file keeps them."""
    return {
        "epoch": epoch,
        "train_loss": round(train[0], 6),
        "train_acc": round(train[1], 6),
        "val_loss": round(val[0], 6),
        "val_acc": round(val[1], 6),
        "lr": lr,
        "seconds": round(seconds, 3),
    }


# tensors of an interrupted epoch's RNG states (the GPU's too when it trained on CUDA)
RNG_GENERATOR, RNG_TORCH, RNG_CUDA = "rng.generator", "rng.torch", "rng.cuda"


@dataclass
class EpochProgress:
    """How far an epoch got: its running sums and, when it was interrupted, the RNG states
    after its last step, so that finishing it later draws exactly what it would have drawn."""

    step: int = 0  # batches done
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    lr: float | None = None  # the rate at the epoch's start, for its history row
    pseudo_labelled: int = 0  # semi-supervised: unlabeled images whose prediction passed the threshold
    unlabeled_seen: int = 0
    generator_state: torch.Tensor | None = field(default=None, repr=False)
    torch_state: torch.Tensor | None = field(default=None, repr=False)
    cuda_state: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_state")}


@dataclass
class PeriodicSave:
    """Saves an epoch's progress (with `save`) when `seconds` have passed since the last save,
    so that a kill inside a long epoch loses at most that much training."""

    save: Callable[[EpochProgress], None]
    seconds: float
    last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def __call__(self, progress: EpochProgress) -> None:
        self.save(progress)
        self.last = time.monotonic()


class EpochInterrupted(Exception):
    """Training stopped on request between two optimizer steps of an epoch."""

    def __init__(self, progress: EpochProgress, total_steps: int):
        super().__init__(f"stopped after step {progress.step} of {total_steps}")
        self.progress, self.total_steps = progress, total_steps


def write_history(path: Path, history: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    files.atomic_write_bytes(path, text.getvalue().encode("utf-8"))  # a kill mid-write keeps the old file


def clear_temporaries(run_dir: Path) -> None:
    """Remove the temporary files of writes a kill interrupted (`.NAME.XXXX.tmp`, see
    files.atomic_write_bytes): each may be as large as a checkpoint."""
    for path in Path(run_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path.name)


@dataclass(frozen=True)
class ResumePoint:
    """Where a run (re)starts: the epochs done, the next one, and how far into it."""

    history: list[dict]
    epoch: int
    best_acc: float
    partial: EpochProgress | None


def fresh_start() -> ResumePoint:
    return ResumePoint([], 1, -1.0, None)


def resume_point(run_dir: Path, setup: RunSetup, opt: Optimisation) -> ResumePoint:
    """The state of run_dir/last.safetensors restored into the run, and where to go on."""
    state, partial = restore(run_dir / "last.safetensors", setup.model, opt)
    point = ResumePoint(state["history"], state["epoch"] + 1, state["best_val_acc"], partial)
    where = f"in epoch {point.epoch} after step {partial.step}" if partial else f"after epoch {state['epoch']}"
    log.info("resumed %s", where)
    return point


def restore(path: Path, model: torch.nn.Module, opt: Optimisation) -> tuple[dict, EpochProgress | None]:
    """Load model, EMA, optimizer and schedule state from a last.safetensors; return its resume
    state and, when it was saved inside an epoch, that epoch's progress."""
    tensors, meta = ckpt.load_checkpoint(path)
    state = meta.get("resume")
    if state is None:
        raise CheckpointError(f"{path} holds no training state to resume from.")
    try:
        model.load_state_dict(ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX))
        if opt.ema is not None:
            opt.ema.module.load_state_dict(ckpt.split_prefix(tensors, EMA_PREFIX))
        ckpt.optimizer_from_tensors(opt.optimizer, tensors, state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
        if opt.plateau is not None:
            opt.plateau.load(state["plateau"])
        partial = state.get("partial")
        progress = None
        if partial is not None:
            progress = EpochProgress(
                **partial,
                generator_state=tensors[RNG_GENERATOR],
                torch_state=tensors[RNG_TORCH],
                cuda_state=tensors.get(RNG_CUDA),
            )
        if state.get("scaler") and opt.scaler.is_enabled():
            opt.scaler.load_state_dict(state["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: its training state does not fit this run ({type(err).__name__}: {err}); "
            "was config.yaml edited? Restore it, or start a new run with another --out."
        ) from None
    return state, progress


def save_last(
    run_dir: Path,
    setup: RunSetup,
    opt: Optimisation,
    history: list[dict],
    best_acc: float,
    meta: dict,
    partial: EpochProgress | None = None,
) -> None:
    """last.safetensors: model, EMA, optimizer and schedule state after the last epoch of
    `history`, or inside the next one (`partial`, with its RNG states); then history.csv.
    Weights that are no longer finite are never saved over the last good ones."""
    check_finite(setup, run_dir, history[-1]["epoch"] + 1 if history else 1)
    tensors = {ckpt.MODEL_PREFIX + k: v for k, v in setup.model.state_dict().items()}
    if opt.ema is not None:
        tensors.update({EMA_PREFIX + k: v for k, v in opt.ema.module.state_dict().items()})
    optim_tensors, optim_state = ckpt.optimizer_to_tensors(opt.optimizer)
    resume = {
        "epoch": history[-1]["epoch"] if history else 0,
        "best_val_acc": best_acc,
        "history": history,
        "optimizer": optim_state,
        "scheduler": opt.scheduler.state_dict(),
        "plateau": opt.plateau.to_dict() if opt.plateau is not None else None,
        "scaler": opt.scaler.state_dict() if opt.scaler.is_enabled() else None,
    }
    if partial is not None:
        resume["partial"] = partial.to_json()
        tensors.update({RNG_GENERATOR: partial.generator_state, RNG_TORCH: partial.torch_state})
        if partial.cuda_state is not None:
            tensors[RNG_CUDA] = partial.cuda_state
    ckpt.save_checkpoint(run_dir / "last.safetensors", {**tensors, **optim_tensors}, {**meta, "resume": resume})
    write_history(run_dir / "history.csv", history)


@contextmanager
def stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """While active, a first Ctrl-C (SIGINT) only asks training to stop after its current
    step; a second one interrupts at once. Yields the `stop()` query. Signal handlers can only
    be set from the main thread; elsewhere Ctrl-C keeps Python's default behaviour."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def stopped(run_dir: Path, where: str) -> None:
    """Say where the run stopped and how to continue it, then stop (exit status 130)."""
    log.warning(
        "interrupted %s; saved %s. Continue with: imgcls train --resume --out %s",
        where,
        run_dir / "last.safetensors",
        run_dir,
    )
    raise KeyboardInterrupt


def check_finite(setup: RunSetup, run_dir: Path, epoch: int, loss: float | None = None) -> None:
    """TrainingDivergedError when the loss or the weights are NaN or infinite: training on would
    only write a model that answers NaN (a run with optim.lr=1e8 used to end with exit 0)."""
    finite_loss = loss is None or math.isfinite(loss)
    if finite_loss and all(torch.isfinite(p).all() for p in setup.model.parameters()):
        return
    what = f"the training loss ({loss})" if not finite_loss else "the weights"
    raise TrainingDivergedError(
        f"{what} is not finite in epoch {epoch}: training diverged. Lower optim.lr "
        f"(now {setup.config.optim.lr:g}) or set optim.clip_grad_norm; {run_dir} keeps its last finite checkpoint."
    )


def train_resumably(
    run_dir: Path,
    setup: RunSetup,
    opt: Optimisation,
    epoch: int,
    history: list[dict],
    best_acc: float,
    one_epoch: Callable[..., Stats],
) -> Stats:
    """one_epoch(periodic=...), saving last.safetensors inside the epoch when `periodic` is due
    and when a stop request interrupts it (then the run stops, saying how to resume)."""

    def save_inside(progress: EpochProgress) -> None:
        last = history[-1] if history else {"epoch": 0, "val_acc": None}
        meta = epoch_metadata(setup, opt, last)
        save_last(run_dir, setup, opt, history, best_acc, meta, partial=progress)
        log.info("saved %s in epoch %d after step %d", run_dir / "last.safetensors", epoch, progress.step)

    minutes = setup.config.train.checkpoint_minutes
    saving = minutes and distributed.is_main()  # rank 0 alone writes
    try:
        stats = one_epoch(periodic=PeriodicSave(save_inside, minutes * 60) if saving else None)
        check_finite(setup, run_dir, epoch, stats.loss)
        return stats
    except EpochInterrupted as interrupted:
        if not distributed.is_main():
            raise KeyboardInterrupt from None
        save_inside(interrupted.progress)
        where = f"in epoch {epoch} after step {interrupted.progress.step} of {interrupted.total_steps}"
        stopped(run_dir, where)


def epoch_metadata(setup: RunSetup, opt: Optimisation, row: dict) -> dict:
    """The metadata a checkpoint saved after the epoch of history row `row` carries."""
    return setup.metadata(epoch=row["epoch"], val_accuracy=row["val_acc"], ema=opt.ema is not None)


def save_epoch(run_dir: Path, setup: RunSetup, opt: Optimisation, history: list[dict], best_acc: float) -> float:
    """best.safetensors when validation accuracy improved, then last.safetensors (with the
    optimizer, schedule and EMA state) and history.csv; returns the best accuracy so far."""
    row = history[-1]
    meta = epoch_metadata(setup, opt, row)
    if row["val_acc"] > best_acc:
        best_acc = row["val_acc"]
        # under the model's own tensor names: the file loads into a bare timm or torchvision model
        ckpt.save_checkpoint(run_dir / "best.safetensors", ckpt.model_tensors(eval_model(setup, opt)), meta)
    save_last(run_dir, setup, opt, history, best_acc, meta)
    return best_acc
