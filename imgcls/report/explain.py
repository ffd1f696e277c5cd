"""Grad-CAM explanations (Selvaraju et al. 2017) through captum's LayerGradCam: which part of
an image drove the predicted class, as a heat map over the image.

The layer explained is the last convolution whose output still has at least MIN_CAM_SIDE
pixels a side: later ones (a ResNet's last stage at 28 px is 1x1) carry no "where".
Models without convolutions (softmax regression, the classic baseline) have no Grad-CAM;
the report says so instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.checkpoint import load_model, read_metadata
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.data.shards import read_source
from imgcls.errors import DataError
from imgcls.extras import available, install_hint, require
from imgcls.models.registry import is_classic

log = logging.getLogger(__name__)

MIN_CAM_SIDE = 4
OVERLAY_ALPHA = 0.45  # share of the heat map in the blended picture


@dataclass(frozen=True)
class Explanation:
    path: str
    image: np.ndarray  # (H, W, C) uint8, as the model saw it
    overlay: np.ndarray  # (H, W, 3) uint8, image blended with the heat map
    target: int  # the class explained (the predicted one)


def explanation_layer(model: nn.Module, pre: Preprocessing) -> tuple[str, nn.Module] | None:
    """(name, module) of the last Conv2d whose output is at least MIN_CAM_SIDE a side, or None."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    sides: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _i, out, n=name: sides.__setitem__(n, min(out.shape[-2:])))
        for name, m in convs
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, pre.channels, pre.img_size, pre.img_size))
    finally:
        for hook in hooks:
            hook.remove()
    usable = [(name, m) for name, m in convs if sides.get(name, 0) >= MIN_CAM_SIDE]
    return usable[-1] if usable else convs[-1]


def why_not_explained(checkpoint: Path | None) -> str | None:
    """A sentence when a model cannot be explained by Grad-CAM, else None."""
    if checkpoint is None:
        return "Grad-CAM needs the PyTorch checkpoint; this evaluation ran an exported model."
    if not available("captum"):
        return f"Grad-CAM needs captum, which is not installed: {install_hint('explain')}."
    if not Path(checkpoint).is_file():
        return f"the checkpoint {checkpoint} is no longer there."
    name = read_metadata(Path(checkpoint)).get("model", {}).get("name", "")
    if is_classic(name):
        return f"{name} is a hand-made-feature model with no convolution layers to explain."
    return None


def explain(checkpoint: Path, paths: list[str]) -> tuple[list[Explanation], str | None]:
    """Grad-CAM of the predicted class for each readable image; (explanations, layer name)."""
    captum_attr = require("captum.attr", "explain")
    LayerAttribution, LayerGradCam = captum_attr.LayerAttribution, captum_attr.LayerGradCam

    model, pre, _ = load_model(checkpoint)
    model = model.float().eval()
    found = explanation_layer(model, pre)
    if found is None:
        return [], None
    layer_name, layer = found
    images, kept = [], []
    for path in paths:
        try:
            images.append(pre.decode(read_source(path), name=path))
            kept.append(path)
        except DataError as err:
            log.warning("Grad-CAM: %s", err)
    if not images:
        return [], layer_name
    pixels = torch.from_numpy(np.stack(images))
    x = to_model_input(pixels, pre, channels_last=False).requires_grad_(True)
    with torch.no_grad():
        targets = model(x).argmax(1)
    cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, (pre.img_size, pre.img_size), "bilinear").detach()[:, 0].numpy()
    return [
        Explanation(path, image, overlay(image, heat), int(target))
        for path, image, heat, target in zip(kept, images, cam, targets.tolist(), strict=True)
    ], layer_name


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image in colour, blended with the heat map scaled to 0..1 (jet colours)."""
    from matplotlib import colormaps

    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    coloured = colormaps["jet"](heat)[:, :, :3] * 255.0
    base = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    return (OVERLAY_ALPHA * coloured + (1 - OVERLAY_ALPHA) * base).clip(0, 255).astype(np.uint8)
