"""docs/configuration.md, written from imgcls/config.py and the recipes, so it cannot drift.

Every key of every section, with its type, default and the comment beside it in config.py;
the recipes with the first sentence of their header. Regenerate after changing config.py:

    python -m imgcls.config_docs > docs/configuration.md      (or: make docs)

tests/test_docs.py fails when the file differs from what this writes.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing

from imgcls import config

COMMAND = "python -m imgcls.config_docs > docs/configuration.md"

INTRO = f"""\
# Configuration

<!-- Generated from imgcls/config.py by `{COMMAND}` (or `make docs`); edit config.py, not this file. -->

A run is configured in layers, later ones winning: imgcls's defaults (below), the model's own
defaults (softmax turns augmentation off), the recipe (`--recipe NAME` or `--recipe my.yaml`),
then the command line's flags and `--set SECTION.KEY=VALUE`. Unknown keys fail with a
suggestion (`train.epoch` → "Did you mean 'epochs'?"), and `config.yaml` in the run folder
records every value that ran; `imgcls train --resume` reads it back.

A recipe file holds the sections it changes:

```yaml
model:
  name: small-net
  kwargs: {{width: 48}}
train:
  epochs: 18
  label_smoothing: 0.1
```
"""


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> the text of the comment on that line."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def field_notes(cls: type) -> dict[str, tuple[str, str]]:
    """Each field's (group heading, description): a comment block above a field that ends
    with ":" heads the group of fields below it; any other describes the field, with the
    comment beside it."""
    source = inspect.getsource(cls)
    lines, comments = source.splitlines(), _comments(source)
    notes = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        heading = " ".join(above).rstrip(":") if above and above[-1].endswith(":") else ""
        beside = [comments[node.lineno]] if node.lineno in comments else []
        notes[node.target.id] = (heading, " ".join(([] if heading else above) + beside))
    return notes


def _type_name(annotation: typing.Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("|", "\\|")


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value == "":
        return '""'
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return "{}" if value == {} else str(value)


def section_table(name: str, cls: type) -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    notes = field_notes(cls)
    doc = inspect.cleandoc(cls.__doc__) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
    out = [f"## `{name}`", ""]
    if doc:
        out += [doc, ""]
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        heading, note = (text.replace("|", "\\|") for text in notes.get(f.name, ("", "")))
        if heading:
            out.append(f"| *{heading}* | | | |")
        out.append(f"| `{name}.{f.name}` | {_type_name(hints[f.name])} | `{_default(f)}` | {note} |")
    return out + [""]


def recipe_table() -> list[str]:
    out = ["## Recipes", "", "| recipe | what it sets |", "| --- | --- |"]
    for name in config.list_recipes():
        header = []
        for line in (config.RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        text = " ".join(header)
        first = text.split(". ")[0].rstrip(".") + "." if text else ""
        out.append(f"| `{name}` | {first} |")
    return out + [""]


def render() -> str:
    lines = [INTRO]
    for name, cls in config._SECTION_TYPES.items():
        lines += section_table(name, cls)
    lines += recipe_table()
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
