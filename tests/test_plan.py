"""Defaults that fit the data (imgcls.training.plan) and the --time budget."""

from __future__ import annotations

import argparse
import logging
import re

import pytest
import yaml

from imgcls.cli.main import main
from imgcls.cli.output import duration
from imgcls.config import build_config
from imgcls.data.resolve import resolve_training_data
from imgcls.models.registry import config_defaults
from imgcls.training.plan import DataProfile, epochs_within, plan_defaults, profile_data


def _profile(images=3000, per_class=300, side=56, colour=True, task="multi-label"):
    return DataProfile(images, 10, per_class, side, colour, task)


def test_plan_follows_the_data():
    mosaics = plan_defaults(_profile())
    assert mosaics.overrides["model"]["name"] == "small-net" and mosaics.overrides["data"]["img_size"] == 56
    assert mosaics.recipe is None and 10 <= mosaics.overrides["train"]["epochs"] <= 50
    assert mosaics.reason.startswith("small-net at 56 px") and "multi-label" in mosaics.reason
    photos = plan_defaults(_profile(images=300, per_class=30, side=400, task="single-label"))
    assert photos.overrides["data"]["img_size"] == 64 and photos.recipe == "small-data"
    digits = plan_defaults(_profile(images=1400, per_class=140, side=8, colour=False, task="single-label"))
    assert digits.overrides["data"]["img_size"] == 16 and "grey" in digits.reason
    big = plan_defaults(_profile(images=60_000, per_class=6_000, side=28, colour=False, task="single-label"))
    assert big.overrides["train"]["epochs"] == 10  # 469 steps an epoch: the floor
    budgeted = plan_defaults(_profile(), time_budget=600)
    assert "10-minute budget" in budgeted.reason and "train" not in budgeted.overrides  # epochs come from the plan


def test_profile_reads_sizes_colour_and_counts(class_folders):
    sources = resolve_training_data(class_folders, val_fraction=0.2, seed=0)
    profile = profile_data(sources)
    assert profile.images == len(sources.train) and profile.classes == 3 and profile.colour
    assert 20 <= profile.side <= 60  # make_class_folders draws 20-60 px sides
    assert profile.per_class == pytest.approx(len(sources.train) / 3, abs=2)


def test_epochs_fit_the_budget():
    assert epochs_within(100, 0.1, 50, 1.0) == 15  # 6 s an epoch, 90% of 100 s
    assert epochs_within(1, 0.1, 50, 1.0) == 1  # at least one


def test_duration_flag():
    assert [duration(t) for t in ("90s", "10m", "1.5h", "600")] == [90, 600, 5400, 600]
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_alexnet_and_vgg_default_to_their_papers_sgd_unless_a_recipe_says_otherwise():
    for name in ("alexnet", "vgg11"):
        optim = build_config(None, {"model": {"name": name}}, config_defaults).optim
        assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    keras = build_config(None, {}, config_defaults).optim
    assert (keras.name, keras.lr) == ("adamw", 0.002)
    tuned = build_config("small-data", {"model": {"name": "alexnet"}}, config_defaults).optim
    assert (tuned.name, tuned.lr) == ("adamw", 0.001)  # a recipe's choice wins over the model's


@pytest.mark.slow
def test_train_with_no_flags_chooses_and_says_why(class_folders, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="imgcls"):
        assert main(["train", str(class_folders), "--out", str(run), "--epochs", "1"]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: ")]
    assert len(said) == 1 and "small-data" in said[0] and "colour" in said[0]
    assert said[0] in (run / "train.log").read_text(encoding="utf-8")  # the run keeps why, too
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"]["name"] == "small-net" and config["train"]["epochs"] == 1  # the user's epochs stay
    assert 20 <= config["data"]["img_size"] <= 60


@pytest.mark.slow
def test_time_budget_plans_the_epochs_and_records_them(class_folders, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="imgcls"):
        args = ["train", str(class_folders), "--out", str(run), "--model", "lenet", "--img-size", "24"]
        assert main([*args, "--time", "1s", "--set", "train.threads=1"]) == 0
    planned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time budget: ")]
    epochs = int(re.fullmatch(r".*-> (\d+) epoch\(s\)", planned[0]).group(1))
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["train"]["epochs"] == epochs and config["train"]["time_budget"] == 1.0  # for --resume
    # every planned epoch, or fewer when one ran longer than planned and the next would overrun
    assert 1 <= (run / "history.csv").read_text().count("\n") - 1 <= epochs


def test_time_budget_refused_with_a_classic_model(class_folders, tmp_path, capsys):
    code = main(["train", str(class_folders), "--out", str(tmp_path / "r"), "--model", "hog-svm", "--time", "1m"])
    assert code == 2 and "train.time_budget" in capsys.readouterr().err
