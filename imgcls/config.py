"""Run configuration: frozen dataclasses per concern, read from a recipe plus overrides.

A config is validated once, at the edge (recipe file, command-line flags), and then
frozen; each function receives only the section it needs. Unknown keys fail with a
"did you mean" suggestion, because a misspelt option that is silently ignored costs
users a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from imgcls.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # folder of class folders, or a root with train/ val/ (test/)
    val: str | None = None  # explicit validation folder; no automatic split then
    img_size: int = 32  # images are decoded once and resized to img_size x img_size
    channels: Literal["auto", "1", "3"] = "auto"  # auto: 1 when every image is grey
    resize: Literal["crop", "squash", "pad"] = "crop"  # how non-square images fit
    val_fraction: float = 0.2  # share of each class held out when no val set exists
    max_pixels: int = 64_000_000  # larger images are refused (decompression bombs)
    decode_workers: int = 0  # processes decoding images; 0 = one per CPU core


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True  # random horizontal flip, per image
    translate: float = 0.0625  # random shift up to this fraction of the size (reflect pad)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "keras-cnn"
    kwargs: dict = field(default_factory=dict)  # extra arguments of the model builder


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01  # not applied to norms and biases
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0.5  # linear warm-up from lr/100, then the schedule


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    label_smoothing: float = 0.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the CPU has it
    channels_last: bool = True  # 3-4x faster convolutions on CPU (see PERFORMANCE notes)
    threads: int = 0  # torch threads; 0 = physical cores


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTION_TYPES = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or say what is wrong."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        text = str(value).lower() if not isinstance(value, str) else value
        if text not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(args)}.{_suggest(text, list(args))}")
        return text
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(key, value, non_none[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}.")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}.")
        try:
            number = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}.") from None
        if annotation is int and float(value) != number:
            raise ConfigError(f"{key}: expected a whole number, got {value!r}.")
        return number
    if annotation is str:
        return str(value)
    if annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}.")
        return dict(value)
    return value


def _section_from_dict(name: str, values: dict[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}'.{_suggest(key, known)}")
        out[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**out)


def _merge(base: dict, updates: dict, where: str) -> dict:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in updates.items():
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{where}: unknown section '{section}'.{_suggest(section, list(_SECTION_TYPES))}")
        if values is None:  # an empty section in YAML
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys to values.")
        merged.setdefault(section, {}).update(values)
    return merged


def read_recipe(recipe: str | Path | None) -> dict:
    """A recipe by name (imgcls/recipes/NAME.yaml) or by YAML file path, as nested dicts."""
    if recipe is None:
        recipe = "default"
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown recipe '{recipe}'. Known recipes: {', '.join(list_recipes())}, "
                f"or give a YAML file.{_suggest(str(recipe), list_recipes())}"
            )
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (data, model, ...).")
    return loaded


def parse_overrides(pairs: list[str]) -> dict:
    """'train.epochs=5' strings (from --set) into nested dicts."""
    nested: dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {pair!r}: expected SECTION.KEY=VALUE, e.g. train.epochs=5.")
        nested.setdefault(section, {})[name] = yaml.safe_load(value) if value else value
    return nested


def build_config(
    recipe: str | Path | None = None,
    overrides: dict | None = None,
    model_defaults: Callable[[str], dict] | None = None,
) -> Config:
    """The validated, frozen config of a run. Later layers win: imgcls's defaults, the
    chosen model's own defaults (`model_defaults(name)`), the recipe, then overrides."""
    recipe_values = _merge({}, read_recipe(recipe), f"recipe {recipe or 'default'}")
    overrides = _merge({}, overrides or {}, "override")
    values: dict = {}
    if model_defaults is not None:
        name = overrides.get("model", {}).get("name") or recipe_values.get("model", {}).get("name") or ModelConfig.name
        values = _merge(values, model_defaults(str(name)), f"defaults of model {name}")
    values = _merge(values, recipe_values, f"recipe {recipe or 'default'}")
    values = _merge(values, overrides, "override")
    config = Config(**{name: _section_from_dict(name, values.get(name, {})) for name in _SECTION_TYPES})
    validate(config)
    return config


def validate(config: Config) -> None:
    checks = [
        (config.data.img_size >= 8, "data.img_size must be at least 8 pixels"),
        (0.0 < config.data.val_fraction < 1.0, "data.val_fraction must be between 0 and 1"),
        (config.data.max_pixels > 0, "data.max_pixels must be positive"),
        (0.0 <= config.augment.translate < 0.5, "augment.translate must be in [0, 0.5)"),
        (config.train.epochs >= 1, "train.epochs must be at least 1"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.eval_batch_size >= 1, "train.eval_batch_size must be at least 1"),
        (0.0 <= config.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (config.optim.lr > 0, "optim.lr must be positive"),
        (0 <= config.optim.momentum < 1, "optim.momentum must be in [0, 1)"),
        (config.optim.weight_decay >= 0, "optim.weight_decay must not be negative"),
        (config.optim.warmup_epochs >= 0, "optim.warmup_epochs must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with config_to_dict (config.yaml of a run), validating it again."""
    config = Config(**{name: _section_from_dict(name, values.get(name) or {}) for name in _SECTION_TYPES})
    validate(config)
    return config


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")


def load_config(path: Path) -> Config:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return config_from_dict(values)
