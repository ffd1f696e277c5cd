"""Reading a weights file and copying its tensors into a model, whatever wrote it.

Weights named by a pretrained tag are fetched into the Hugging Face cache first
(imgcls.models.pretrained); here they are a local file. A `.safetensors` file holds plain
arrays (an imgcls checkpoint's model tensors carry a `model.` prefix); a `.pth`/`.pt`/`.bin`
file is read with torch.load(weights_only=True), which refuses pickled objects instead of
running them. Training (--pretrained) and the data doctor's feature model both load through here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)

# imgcls.checkpoint.MODEL_PREFIX: the models layer sits below checkpoint, so it cannot import it
# (a test holds the two equal).
CHECKPOINT_MODEL_PREFIX = "model."
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state dict file: imgcls checkpoint, bare safetensors, or torch weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} do not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
        model_tensors = {
            k.removeprefix(CHECKPOINT_MODEL_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(CHECKPOINT_MODEL_PREFIX)
        }
        return model_tensors or tensors  # an imgcls checkpoint, else bare weights
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: pretrained weights must be .safetensors or {', '.join(TORCH_SUFFIXES)}.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"{path} cannot be read as plain weights ({type(err).__name__}); files holding pickled "
            "objects are refused because loading them could run code. Save model.state_dict() instead."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    tensors = {k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors.")
    return tensors


def load_pretrained(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the file's tensors into the model; returns (loaded, not loaded) model names.

    By name and shape first; a first convolution trained on another number of input channels
    is adapted (timm's adapt_input_conv). When the names do not match (weights saved by another
    implementation of the same network, e.g. lukemelas' EfficientNet for timm's) but the
    backbone's tensors have the same shapes in the same order, they are taken by position,
    with a warning showing the mapping. The classifier is loaded only when its shape fits."""
    source = read_state_dict(path)
    target = model.state_dict()
    by_name = _match_by_name(source, target)
    head = _classifier_names(model)
    backbone = [name for name in target if name not in head]
    if sum(name in by_name for name in backbone) < len(backbone) / 2:
        by_position = _match_by_position(source, target, backbone, path)
        if len(by_position) > len(by_name):
            by_name = by_position
    if not by_name:
        raise CheckpointError(f"no tensor of {path} fits the model by name or order; {_side_by_side(source, target)}")
    target.update(by_name)
    model.load_state_dict(target)
    loaded = [name for name in target if name in by_name]
    skipped = [name for name in target if name not in by_name]
    log.info(
        "pretrained %s: loaded %d tensors, %d left as initialised%s",
        path,
        len(loaded),
        len(skipped),
        f" ({', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''})" if skipped else "",
    )
    return loaded, skipped


def _fitted(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """`value` shaped as `like` (a first convolution adapted to its input channels), or None."""
    from timm.models import adapt_input_conv

    if value.ndim == 4 and like.ndim == 4 and value.shape[0] == like.shape[0] and value.shape[1] != like.shape[1]:
        value = adapt_input_conv(like.shape[1], value)
    return value.to(like.dtype) if value.shape == like.shape else None


def _match_by_name(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    matched = {}
    for name, tensor in target.items():
        value = _fitted(source[name], tensor) if name in source else None
        if value is not None:
            matched[name] = value
    return matched


def _classifier_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
    return {name for name, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def _match_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], backbone: list[str], path
) -> dict[str, torch.Tensor]:
    """The backbone's tensors taken in order from the start of the file when every shape
    agrees (if not, again without the scalar batch-norm step counters, which some exporters
    drop); the classifier from the tensors after them when its shapes fit."""
    for keep in (lambda t: True, lambda t: t.ndim > 0):
        names = [n for n in backbone if keep(target[n])]
        values = [(k, v) for k, v in source.items() if keep(v)]
        if len(values) >= len(names) and all(
            _fitted(value, target[name]) is not None for name, (_, value) in zip(names, values, strict=False)
        ):
            break
    else:
        return {}
    matched = {name: _fitted(value, target[name]) for name, (_, value) in zip(names, values, strict=False)}
    rest = values[len(names) :]
    head = [n for n in target if n not in backbone and keep(target[n])]
    if len(rest) == len(head) and all(v.shape == target[n].shape for n, (_, v) in zip(head, rest, strict=True)):
        matched.update({n: v.to(target[n].dtype) for n, (_, v) in zip(head, rest, strict=True)})
    pairs = [(n, values[i][0]) for i, n in enumerate(names)]
    shown = pairs[:3] + [("...", "...")] + pairs[-3:] if len(pairs) > 6 else pairs
    log.warning(
        "pretrained %s: its tensor names differ from the model's, so %d tensors were loaded by position "
        "(same shapes, same order):\n%s",
        path,
        len(matched),
        "\n".join(f"  {model_name:<40} <- {file_name}" for model_name, file_name in shown),
    )
    return matched


def _side_by_side(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], rows: int = 5) -> str:
    """The first tensors where model and file part, one pair per line, so the mismatch shows."""
    model_rows = [(n, tuple(t.shape)) for n, t in target.items() if t.ndim > 0]
    file_rows = [(n, tuple(t.shape)) for n, t in source.items() if t.ndim > 0]
    first = next(
        (i for i, (a, b) in enumerate(zip(model_rows, file_rows, strict=False)) if a[1] != b[1]),
        min(len(model_rows), len(file_rows)),
    )
    lines = [f"model has {len(model_rows)} tensors, the file {len(file_rows)}; they part at #{first}:"]
    for i in range(first, first + rows):
        left = f"{model_rows[i][0]} {model_rows[i][1]}" if i < len(model_rows) else "-"
        right = f"{file_rows[i][0]} {file_rows[i][1]}" if i < len(file_rows) else "-"
        lines.append(f"  model {left:<50} file {right}")
    return "is it the same architecture? " + "\n".join(lines)
