"""Config: recipes + overrides, validated once, frozen; mistakes fail loudly with suggestions."""

from __future__ import annotations

import dataclasses

import pytest

from imgcls.config import (
    RECIPES_DIR,
    Config,
    build_config,
    list_recipes,
    load_config,
    parse_overrides,
    read_recipe,
    save_config,
)
from imgcls.errors import ConfigError


def test_default_recipe_loads_and_matches_its_file():
    config = build_config()
    assert isinstance(config, Config)
    recipe = read_recipe("default")
    for section, values in recipe.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value, f"{section}.{key}"
    assert build_config("default") == config


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_loads(name):
    config = build_config(name)
    assert isinstance(config, Config)
    assert build_config(RECIPES_DIR / f"{name}.yaml") == config  # by path as well as by name


def test_recipes_exist():
    assert "default" in list_recipes()


def test_overrides_apply_and_keep_the_rest():
    base = build_config()
    config = build_config(overrides={"train": {"epochs": 3, "batch_size": 16}, "optim": {"name": "sgd"}})
    assert config.train.epochs == 3
    assert config.train.batch_size == 16
    assert config.optim.name == "sgd"
    assert config.optim.lr == base.optim.lr
    assert config.data == base.data


def test_override_strings_are_coerced():
    config = build_config(
        overrides=parse_overrides(["train.epochs=5", "optim.lr=1e-3", "augment.hflip=false", "data.channels=1"])
    )
    assert config.train.epochs == 5 and isinstance(config.train.epochs, int)
    assert config.optim.lr == pytest.approx(1e-3) and isinstance(config.optim.lr, float)
    assert config.augment.hflip is False
    assert config.data.channels == "1"


def test_parse_overrides():
    assert parse_overrides(["train.epochs=5"]) == {"train": {"epochs": 5}}
    assert parse_overrides(["train.epochs=5", "train.seed=3", "data.train=/tmp/x=y"]) == {
        "train": {"epochs": 5, "seed": 3},
        "data": {"train": "/tmp/x=y"},
    }
    assert parse_overrides(["model.kwargs={drop_rate: 0.1}"]) == {"model": {"kwargs": {"drop_rate": 0.1}}}
    for bad in ["train.epochs", "epochs=5", "train.=5"]:
        with pytest.raises(ConfigError):
            parse_overrides([bad])


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean") as info:
        build_config(overrides={"train": {"epoch": 5}})
    assert "'epochs'" in str(info.value)
    assert "train.epoch" in str(info.value)


def test_unknown_section_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean") as info:
        build_config(overrides={"trian": {"epochs": 5}})
    assert "'train'" in str(info.value)


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("optim:\n  learning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        build_config(recipe)


def test_unknown_recipe_name():
    with pytest.raises(ConfigError, match="default"):
        build_config("defualt")


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "epochs", "abc"),
        ("train", "epochs", 2.5),
        ("train", "epochs", True),
        ("optim", "lr", "fast"),
        ("augment", "hflip", "maybe"),
        ("optim", "name", "adam-ish"),
        ("data", "channels", "2"),
        ("model", "kwargs", "[1, 2]"),
    ],
)
def test_wrong_types_fail(section, key, value):
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        build_config(overrides={section: {key: value}})


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "epochs", 0),
        ("train", "batch_size", -1),
        ("train", "label_smoothing", 1.0),
        ("optim", "lr", 0),
        ("optim", "weight_decay", -0.1),
        ("optim", "warmup_epochs", -1),
        ("augment", "translate", 0.5),
        ("data", "val_fraction", 1.0),
        ("data", "img_size", 4),
    ],
)
def test_out_of_range_values_fail(section, key, value):
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        build_config(overrides={section: {key: value}})


def test_save_load_round_trip(tmp_path):
    config = build_config(
        overrides={
            "data": {"train": "/data/images ü", "val": None, "channels": "3", "img_size": 48},
            "model": {"name": "resnet18", "kwargs": {"drop_rate": 0.25}},
            "optim": {"name": "sgd", "lr": 0.05, "nesterov": False},
            "train": {"epochs": 2, "seed": 7, "label_smoothing": 0.1},
            "augment": {"hflip": False, "translate": 0.0},
        }
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert loaded.data.val is None
    assert loaded.model.kwargs == {"drop_rate": 0.25}


def test_default_config_round_trip(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(build_config(), path)
    assert load_config(path) == build_config()


def test_config_is_frozen():
    config = build_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train = config.train  # type: ignore[misc]
    for section in (config.data, config.augment, config.model, config.optim, config.train):
        assert dataclasses.is_dataclass(section)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)
    assert config == build_config()  # nothing above changed it


def test_set_changes_one_entry_of_model_kwargs():
    from imgcls.models.registry import config_defaults

    config = build_config("fashion-mnist", parse_overrides(["model.kwargs.act=relu"]), config_defaults)
    assert config.model.kwargs == {"width": 48, "act": "relu"}  # the recipe's width survives
    assert parse_overrides(["model.kwargs.width=32", "model.kwargs.act=gelu"]) == {
        "model": {"kwargs": {"width": 32, "act": "gelu"}}
    }
    with pytest.raises(ConfigError, match="small-net: act"):
        from imgcls.models import create_model

        create_model("small-net", num_classes=3, in_chans=1, img_size=28, act="tanh")
