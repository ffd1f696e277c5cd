"""Starting from other weights: --pretrained files, frozen backbones, and teachers.

Weights come from local files only, never from a hub. A `.safetensors` file holds plain
arrays; a `.pth`/`.pt`/`.bin` file is read with torch.load(weights_only=True), which
refuses pickled objects instead of running them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)

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
        model_tensors = ckpt.split_prefix(tensors, ckpt.MODEL_PREFIX)
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
    """Copy every tensor whose name and shape match; a first convolution trained on another
    number of input channels is adapted (timm's adapt_input_conv). Returns (loaded, not loaded)."""
    from timm.models import adapt_input_conv

    source = read_state_dict(path)
    target = model.state_dict()
    loaded, skipped = [], []
    for name, tensor in target.items():
        value = source.get(name)
        if (
            value is not None
            and value.ndim == 4
            and value.shape[0] == tensor.shape[0]
            and value.shape[1] != tensor.shape[1]
        ):
            value = adapt_input_conv(tensor.shape[1], value)
        if value is not None and value.shape == tensor.shape:
            target[name] = value.to(tensor.dtype)
            loaded.append(name)
        else:
            skipped.append(name)
    if not loaded:
        raise CheckpointError(f"no tensor of {path} matches model's names and shapes; is it the same architecture?")
    model.load_state_dict(target)
    log.info(
        "pretrained %s: loaded %d tensors, %d left as initialised%s",
        path,
        len(loaded),
        len(skipped),
        f" ({', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''})" if skipped else "",
    )
    return loaded, skipped


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classifier (timm's get_classifier)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for param in model.parameters():
        param.requires_grad = trainable or id(param) in head
