"""The option checks that need no image: run before the first image is decoded, so a refused
combination fails in a second instead of minutes into a run. Each message names one key."""

from __future__ import annotations

from imgcls.config import Config
from imgcls.errors import ConfigError
from imgcls.models.registry import is_classic, resolve


def check_model_config(config: Config) -> None:
    """The model checks that need no data, so a typo fails before minutes of decoding."""
    entry = resolve(config.model.name)
    if config.train.time_budget and is_classic(config.model.name):
        raise ConfigError("train.time_budget plans epochs; a classic model is fitted once. Leave --time off.")
    if config.train.loss != "cross-entropy" and is_classic(config.model.name):
        raise ConfigError(f"train.loss {config.train.loss} trains a neural network; {config.model.name} is classic.")
    if config.data.img_size < entry.min_size:
        raise ConfigError(
            f"model {config.model.name!r} needs images of at least {entry.min_size} px; got {config.data.img_size}."
        )


def check_task_options(config: Config, task: str) -> None:
    """Combinations of options refused once the data's task is known (from the folder layout
    or the manifest), before any image is decoded."""
    tc, augment = config.train, config.augment
    refused = []
    if task == "multi-label":
        why = "assumes one class per image; multi-label training does not use it"
        refused += [
            ("train.balanced_sampling", tc.balanced_sampling, why),
            ("train.label_smoothing", tc.label_smoothing, why),
            ("distill.teacher", config.distill.teacher, why),
            (
                f"train.loss {tc.loss}",
                tc.loss != "cross-entropy",
                "needs one class per image; multi-label data trains with BCE or ASL",
            ),
        ]
    if config.semi.unlabeled:
        why = "does not combine with semi-supervised training (--unlabeled); turn one off"
        mixing = augment.mix_prob > 0
        refused += [
            ("train.accumulate", tc.accumulate != 1, why),
            ("augment.mixup", mixing and augment.mixup > 0, why),
            ("augment.cutmix", mixing and augment.cutmix > 0, why),
            ("augment.ricap", mixing and augment.ricap > 0, why),
            ("distill.teacher", config.distill.teacher, why),
            ("data.task", task == "multi-label", "multi-label data " + why),
            ("train.time_budget", tc.time_budget, why),
            ("train.progressive_resize", tc.progressive_resize, why),
        ]
    for key, given, why in refused:
        if given:
            raise ConfigError(f"{key} {why}.")
