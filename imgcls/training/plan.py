"""Defaults that fit the data: what `imgcls train DATA` trains when it is told no model, recipe
or weights, chosen from the data it has just scanned; and, with `--time`, how many epochs fit
the budget, planned from a measured step.

The choice (measured in benchmarks/defaults.py; the table is in benchmarks/RESULTS.md):
- small-net, the strongest from-scratch network here on 8-64 px images: the old default
  (keras-cnn at 32 px) lost to it on every set measured;
- at the images' own typical size (the median shorter side of a sample), clamped to 16-64 px:
  more pixels than 64 cost more CPU time than they give accuracy from scratch;
- with fewer than SMALL_DATA images a class, the small-data recipe (the article's strong
  augmentation, batch 32);
- epochs for about STEP_TARGET optimizer steps, between 10 and 50.
Pretrained weights bring their own recipe and size (imgcls.models.pretrained); these rules
only apply without them.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, replace

import torch

from imgcls.data.sources import DataSources
from imgcls.training import distributed
from imgcls.training.run import RunSetup, build_optimisation, train_decode_size
from imgcls.training.steps import Step, supervised_step

log = logging.getLogger(__name__)

SMALL_DATA = 200  # images a class below which the small-data recipe's augmentation pays
STEP_TARGET = 700  # optimizer steps a from-scratch run takes by default
SIZE_RANGE = (16, 64)
EPOCH_RANGE = (10, 50)
SAMPLE = 200  # image headers read for the typical size and colour
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class DataProfile:
    images: int  # training images
    classes: int
    per_class: int  # median training images a class (images holding the label, multi-label)
    side: int | None  # median shorter side of a sample, in pixels; None when none could be read
    colour: bool
    task: str


@dataclass(frozen=True)
class Plan:
    recipe: str | None
    overrides: dict  # {section: {key: value}}, under whatever the user set
    reason: str
    task: str  # of the scanned data


def profile_data(sources: DataSources) -> DataProfile:
    """What the chooser looks at, from the file list and the headers of a sample of images."""
    from PIL import Image

    train = sources.train
    if sources.task == "multi-label":
        counts = [sum(s.targets[i] for s in train) for i in range(len(sources.classes))]
    else:
        counts = [sum(s.label == i for s in train) for i in range(len(sources.classes))]
    step = max(1, len(train) // SAMPLE)
    sides, colour = [], False
    for sample in train[::step][:SAMPLE]:
        try:
            with Image.open(sample.path) as img:  # the header only
                sides.append(min(img.size))
                colour = colour or img.mode not in GREY_MODES
        except Exception:  # noqa: BLE001 - unreadable here is skipped later, with its reason
            continue
    side = int(statistics.median(sides)) if sides else None
    return DataProfile(len(train), len(sources.classes), int(statistics.median(counts)), side, colour, sources.task)


def plan_defaults(profile: DataProfile, time_budget: float = 0.0) -> Plan:
    """The model, size, recipe and epochs for this data, with the reason in one line."""
    low, high = SIZE_RANGE
    size = min(high, max(low, profile.side or 32))
    few = profile.per_class < SMALL_DATA
    recipe = "small-data" if few else None
    batch = 32 if few else 128
    steps = -(-profile.images // batch)
    epochs = min(EPOCH_RANGE[1], max(EPOCH_RANGE[0], round(STEP_TARGET / max(steps, 1))))
    overrides = {"model": {"name": "small-net"}, "data": {"img_size": size}}
    if not time_budget:  # with one, the epochs are planned from a measured step (plan_epochs)
        overrides["train"] = {"epochs": epochs}
    looks = f"{profile.side}-px" if profile.side else "unknown-size"
    reason = (
        f"small-net at {size} px, {'epochs by the time budget' if time_budget else f'{epochs} epochs'}"
        f"{', recipe small-data' if few else ''}: {profile.images:,} images ({profile.per_class:,} a class), "
        f"{looks} {'colour' if profile.colour else 'grey'}, {profile.task}, no pretrained weights"
        + (f", {_duration(time_budget)} budget" if time_budget else "")
    )
    return Plan(recipe, overrides, reason, profile.task)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g}-minute" if seconds >= 60 else f"{seconds:g}-second"


def epochs_within(budget_left: float, step_seconds: float, steps_per_epoch: int, val_seconds: float) -> int:
    """Epochs whose steps and validation fit the time left (at least 1); a tenth is kept back
    for the final evaluation, the report and the step time's own error."""
    epoch = step_seconds * steps_per_epoch + val_seconds
    return max(1, int(0.9 * budget_left // max(epoch, 1e-9)))


def plan_epochs(setup: RunSetup, budget_left: float, batches_per_epoch: int) -> RunSetup:
    """The setup with train.epochs set to what fits `budget_left` seconds (train.epochs, as given,
    is the most it may be), from the median of a
    few timed steps on a copy of the model (the run's weights, statistics and random draws are
    untouched; a step's time does not depend on the pixels, so the batch is blank)."""
    tc = setup.config.train
    side = train_decode_size(setup.config.data, setup.config.augment)[0]
    batch = min(tc.batch_size, len(setup.train))
    images = torch.zeros((batch, side, side, setup.preprocessing.channels), dtype=torch.uint8)
    labels = torch.as_tensor(setup.train.labels[:batch])
    trial = replace(setup, model=copy.deepcopy(setup.model), teacher=setup.teacher)
    torch_state = torch.get_rng_state()
    try:
        opt = build_optimisation(trial, batches_per_epoch)
        step = supervised_step(trial, opt, torch.Generator().manual_seed(0), steps=1_000_000)
        step_seconds = measure_step(step, ((images, labels) for _ in range(8)))
    finally:
        torch.set_rng_state(torch_state)
    # validation: a forward pass (about a third of a training step), twice with mirror TTA
    val_seconds = len(setup.val) / batch * step_seconds / 3 * (2 if setup.preprocessing.test_flip else 1)
    epochs = min(tc.epochs, epochs_within(budget_left, step_seconds, batches_per_epoch, val_seconds))
    if distributed.world_size() > 1:  # every process must plan the same schedule
        epochs = max(1, round(distributed.all_reduce_sums(float(epochs))[0] / distributed.world_size()))
    log.info(
        "time budget: %.0f s left after decoding; %.3f s a step, %d steps an epoch, %.1f s to validate -> %d epoch(s)",
        budget_left,
        step_seconds,
        batches_per_epoch,
        val_seconds,
        epochs,
    )
    return replace(setup, config=replace(setup.config, train=replace(tc, epochs=epochs)))


def measure_step(step: Step, batches, steps: int = 3, warmup: int = 2) -> float:
    """Median seconds of a step after `warmup` (whose first builds the kernels)."""
    times = []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        step(i, batch)
        if i >= warmup:
            times.append(time.perf_counter() - started)
        if len(times) >= steps:
            break
    return statistics.median(times) if times else 0.0
