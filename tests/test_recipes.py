"""Training methods end to end on tiny data: transfer, distillation, EMA, mixing, schedules."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls.cli.main import main
from imgcls.config import OptimConfig, build_config, list_recipes
from imgcls.errors import CheckpointError
from imgcls.training.optim import build_optimizer, build_schedule
from imgcls.training.transfer import load_pretrained, read_state_dict
from tests.helpers import make_class_folders

FAST = ["-q", "--img-size", "32", "--batch-size", "16", "--epochs", "1"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    data = make_class_folders(tmp_path_factory.mktemp("recipes") / "data", per_class=16, junk=False)
    run = data.parent / "teacher"
    assert main(["train", str(data), "--out", str(run), *FAST, "--model", "lenet"]) == 0
    return data, run


@pytest.mark.slow
def test_pretrained_with_other_classes_loads_the_backbone(teacher_run, tmp_path, caplog):
    data, teacher = teacher_run
    two = tmp_path / "two"
    for name in ("bird", "猫"):
        (two / name).mkdir(parents=True)
        for path in sorted((data / name).iterdir())[:8]:
            (two / name / path.name).write_bytes(path.read_bytes())
    with caplog.at_level(logging.INFO, logger="imgcls"):
        status = main(
            [
                "train",
                str(two),
                "--out",
                str(tmp_path / "ft"),
                *FAST[1:],
                "--model",
                "lenet",
                "--pretrained",
                str(teacher / "best.safetensors"),
            ]
        )
    assert status == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pretrained"))
    assert "loaded 8 tensors" in line and "fc.weight" in line  # the 3-class head is rebuilt for 2


def test_a_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    bad = tmp_path / "weights.pth"
    torch.save({"state_dict": Payload()}, bad)
    with pytest.raises(CheckpointError, match="pickled objects are refused"):
        read_state_dict(bad)
    assert not marker.exists()


@pytest.mark.slow
def test_a_torch_state_dict_loads_and_adapts_input_channels(tmp_path):
    from imgcls.models import create_model

    rgb = create_model("resnet18", num_classes=5, in_chans=3, img_size=32)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = create_model("resnet18", num_classes=5, in_chans=1, img_size=32)
    loaded, skipped = load_pretrained(grey, tmp_path / "rgb.pth")
    assert "conv1.weight" in loaded and not skipped
    assert torch.allclose(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))


@pytest.mark.slow
def test_distillation_and_teacher_checks(teacher_run, tmp_path, capsys):
    data, teacher = teacher_run
    args = ["train", str(data), *FAST, "--model", "keras-cnn", "--teacher", str(teacher / "best.safetensors")]
    assert main([*args, "--out", str(tmp_path / "student"), "--kd-alpha", "0.7"]) == 0
    assert json.loads((tmp_path / "student" / "metrics.json").read_text(encoding="utf-8"))["accuracy"] > 0.5
    capsys.readouterr()
    assert (
        main(
            [
                *args[:-2],
                "--teacher",
                str(teacher / "best.safetensors"),
                "--img-size",
                "28",
                "--out",
                str(tmp_path / "other-size"),
            ]
        )
        == 2
    )
    assert "takes 32 px" in capsys.readouterr().err


@pytest.mark.slow
def test_ema_mixing_and_per_image_augmentation_train(teacher_run, tmp_path):
    data, _ = teacher_run
    sets = [
        "train.ema=true",
        "train.ema_decay=0.9",
        "augment.mixup=0.4",
        "augment.cutmix=1.0",
        "augment.ricap=0.3",
        "augment.rotation=15",
        "augment.random_erasing=0.5",
        "train.class_weights=balanced",
        "train.balanced_sampling=true",
        "train.accumulate=2",
        "optim.clip_grad_norm=1.0",
        "train.label_smoothing=0.1",
    ]
    run = tmp_path / "tricks"
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(run),
                *FAST[:-2],
                "--epochs",
                "2",
                "--model",
                "keras-cnn",
                *[a for s in sets for a in ("--set", s)],
            ]
        )
        == 0
    )
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["accuracy"] > 0.5


@pytest.mark.slow
def test_early_stopping_stops(teacher_run, tmp_path):
    data, _ = teacher_run
    run = tmp_path / "early"
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(run),
                *FAST[:-2],
                "--epochs",
                "6",
                "--set",
                "optim.lr=1e-9",
                "--set",
                "train.early_stopping=1",
                "--set",
                "optim.schedule=constant",
            ]
        )
        == 0
    )
    assert len((run / "history.csv").read_text().splitlines()) - 1 < 6


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adabound"])
@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "plateau", "constant"])
def test_every_optimizer_and_schedule_lowers_a_toy_loss(name, schedule):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = nn.Linear(4, 1)
    config = OptimConfig(name=name, lr=0.05, weight_decay=0.0, schedule=schedule, step_epochs=2, warmup_epochs=0.2)
    optimizer = build_optimizer(model, config)
    scheduler, plateau = build_schedule(optimizer, config, steps_per_epoch=10, epochs=5)
    first = nn.functional.mse_loss(model(x), y).item()
    for _epoch in range(5):
        for _ in range(10):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if plateau is not None:
            plateau.update(loss.item())
    last = nn.functional.mse_loss(model(x), y).item()
    assert math.isfinite(last) and last < 0.5 * first


def test_every_recipe_validates():
    assert {"default", "small-data", "finetune"} <= set(list_recipes())
    for recipe in list_recipes():
        config = build_config(recipe)
        assert config.train.epochs >= 1


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_plots(teacher_run, tmp_path, capsys):
    from imgcls.training.lr_find import suggest_lr

    data, _ = teacher_run
    capsys.readouterr()
    assert (
        main(
            [
                "lr-find",
                str(data),
                "-q",
                "--img-size",
                "32",
                "--batch-size",
                "16",
                "--steps",
                "30",
                "--out",
                str(tmp_path / "lr.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rate = float(out.split("suggested learning rate: ")[1].split()[0])
    assert 1e-6 <= rate <= 1.0
    assert (tmp_path / "lr.png").read_bytes().startswith(b"\x89PNG")
    # steepest descent of a loss that falls fastest between 1e-3 and 1e-2
    lrs = [10 ** (-6 + i * 0.1) for i in range(61)]
    losses = [2.0 - math.tanh((math.log10(lr) + 2.5) * 3) for lr in lrs]
    assert 1e-3 < suggest_lr(lrs, losses) < 1e-2


@pytest.mark.slow
def test_classic_baseline_through_train_evaluate_predict(teacher_run, tmp_path, capsys):
    data, _ = teacher_run
    run = tmp_path / "classic"
    assert main(["train", str(data), "--out", str(run), "-q", "--model", "color-hist-logreg", "--img-size", "32"]) == 0
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] > 0.9  # the classes differ by colour
    assert (run / "best.safetensors").read_bytes()[8:9] == b"{"  # safetensors' JSON header, no pickle
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.safetensors"), str(data), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.9
    assert main(["predict", str(run / "best.safetensors"), str(data / "bird"), "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(line["predictions"][0]["label"] == "bird" for line in lines) >= 14
