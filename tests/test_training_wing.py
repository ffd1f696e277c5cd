"""The training wing's shared parts: lr-find takes the run's own supervised step (accumulation,
per-image transforms, mixing), and best.safetensors' final save carries the float32 score."""

from __future__ import annotations

import csv
import json
import math

import pytest

import imgcls.training.lr_find as lr_find_module
from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.config import build_config
from imgcls.models.registry import config_defaults


def _lr_find_config(data, **train):
    overrides = {
        "data": {"train": str(data), "img_size": 24},
        "model": {"name": "lenet"},
        "train": {"batch_size": 8, "threads": 1, **train},
        "augment": {"mixup": 0.2, "rotation": 10.0},
    }
    return build_config(None, overrides, config_defaults)


def test_lr_find_steps_as_training_does(class_folders, monkeypatch):
    """With train.accumulate=2 a recorded rate takes two batches (mixed and rotated, as the run's
    own step draws them; an epoch's odd last batch steps alone), and the rates rise by the same
    factor each optimizer step."""
    batches = {"n": 0}
    real_step = lr_find_module.supervised_step

    def counting_step(*args):
        step = real_step(*args)

        def counted(i, batch):
            batches["n"] += 1
            return step(i, batch)

        return counted

    monkeypatch.setattr(lr_find_module, "supervised_step", counting_step)
    result = lr_find_module.find_lr(_lr_find_config(class_folders, accumulate=2), start=1e-5, end=1e-2, steps=6)
    assert len(result.lrs) == 6 and 10 <= batches["n"] <= 12  # one step a batch would be 6
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([1000 ** (1 / 5)] * 5)
    assert all(math.isfinite(loss) for loss in result.losses)


@pytest.mark.slow
def test_best_checkpoint_records_the_final_float32_score(class_folders, tmp_path):
    """Epochs score under bfloat16 autocast; the best checkpoint's final save records the
    float32 score metrics.json reports (and the epoch's own beside it when they differ)."""
    run = tmp_path / "run"
    args = ["-q", "train", str(class_folders), "--out", str(run), "--model", "lenet", "--img-size", "24"]
    assert main([*args, "--epochs", "2", "--precision", "bf16", "--set", "train.threads=1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    training = ckpt.read_metadata(run / "best.safetensors")["training"]
    assert training["val_accuracy"] == metrics["accuracy"]
    tensors, _ = ckpt.load_checkpoint(run / "best.safetensors")
    assert tensors and not any(name.startswith(ckpt.MODEL_PREFIX) for name in tensors)  # the model's own names
    with open(run / "history.csv", encoding="utf-8") as f:
        best_epoch_score = max(float(row["val_acc"]) for row in csv.DictReader(f))
    if best_epoch_score != metrics["accuracy"]:
        assert training["epoch_val_accuracy"] == pytest.approx(best_epoch_score)


def test_final_metrics_take_the_last_float32_validation_instead_of_repeating_it(split_root, tmp_path, monkeypatch):
    """A float32 run whose best epoch is its last has already run the final scoring's forward:
    finishing takes that validation's probabilities (one scoring of the validation set per
    epoch, none more), and they are the ones `imgcls evaluate` computes from best.safetensors."""
    import numpy as np

    from imgcls.report import load_predictions
    from imgcls.training import validate

    scorings = []
    real_evaluate = validate.evaluate
    monkeypatch.setattr(validate, "evaluate", lambda *a, **k: scorings.append(1) or real_evaluate(*a, **k))
    run, evaluated = tmp_path / "run", tmp_path / "evaluated"
    args = ["-q", "train", str(split_root / "train"), "--val", str(split_root / "val"), "--out", str(run)]
    args += ["--model", "lenet", "--img-size", "24", "--epochs", "1", "--precision", "fp32"]
    assert main([*args, "--set", "train.threads=1"]) == 0
    assert len(scorings) == 1  # epoch 1's validation, the best and last epoch
    best = str(run / "best.safetensors")
    assert main(["-q", "evaluate", best, str(split_root / "val"), "--out", str(evaluated)]) == 0
    trained, fresh = load_predictions(run), load_predictions(evaluated)
    assert trained.paths == fresh.paths
    np.testing.assert_allclose(trained.probs, fresh.probs, atol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert ckpt.read_metadata(run / "best.safetensors")["training"]["val_accuracy"] == metrics["accuracy"]


def test_report_recipe_line_names_the_recipe_and_every_augmentation():
    from imgcls.training.outputs import describe_recipe

    line = describe_recipe(build_config("small-data", {}, config_defaults))
    assert line.startswith("recipe small-data; adamw lr 0.001")
    for part in ("rotation 20 deg", "shear 8 deg", "zoom 0.15", "brightness 0.2", "contrast 0.2", "shift 0.1"):
        assert part in line
    assert build_config(None, {}, config_defaults).recipe == "default"
