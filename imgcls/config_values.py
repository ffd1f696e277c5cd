"""Text to typed config values: YAML and command-line strings into the types of the config's
fields (numbers, booleans, choices, per-channel lists, mappings), merges of value layers, and
"did you mean" suggestions for misspelt keys and choices."""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any, Literal

import yaml

from imgcls.errors import ConfigError


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or say what is wrong."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        text = str(value).lower() if not isinstance(value, str) else value
        if text not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(args)}.{suggest(text, list(args))}")
        return text
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(key, value, non_none[0])
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
        if not math.isfinite(number):  # YAML reads .nan and .inf; either would poison a whole run
            raise ConfigError(f"{key}: expected a finite number, got {value!r}.")
        return number
    if annotation is str:
        return str(value)
    if origin is tuple:  # numbers per channel: a YAML list, or "0.5,0.5,0.5" on the command line
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}.")
        return tuple(coerce(key, v, args[0]) for v in value)
    if annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}.")
        return dict(value)
    return value


def merge(base: dict, updates: dict, where: str, sections: list[str]) -> dict:
    """`updates` over `base`, section by section; a section not in `sections` is an error."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in updates.items():
        if section not in sections:
            raise ConfigError(f"{where}: unknown section '{section}'.{suggest(section, sections)}")
        if values is None:  # an empty section in YAML
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys to values.")
        target = merged.setdefault(section, {})
        for key, value in values.items():
            # Mappings (model.kwargs) merge entry by entry, so a flag can change one argument.
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                value = {**target[key], **value}
            target[key] = value
    return merged


def parse_overrides(pairs: list[str]) -> dict:
    """'train.epochs=5' strings (from --set) into nested dicts; 'model.kwargs.width=48' sets
    one entry of a mapping-valued key."""
    nested: dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {pair!r}: expected SECTION.KEY=VALUE, e.g. train.epochs=5.")
        parsed = yaml.safe_load(value) if value else value
        name, dot, entry = name.partition(".")
        if dot and entry:
            nested.setdefault(section, {}).setdefault(name, {})[entry] = parsed
        else:
            nested.setdefault(section, {})[name] = parsed
    return nested
