"""Pretrained features for the label-error model: `imgcls data check --pretrained NAME_OR_FILE`.

A network trained on ImageNet tells a rose from an apple where 16x16 thumbnails cannot: on
189 clip-art pictures in 7 classes (5 draws) the thumbnail model was right out-of-fold 41-57%
of the time, and logistic regression on EfficientNet-Lite0's features 64-78%
(benchmarks/doctor_labels.py). Each image is decoded as the weights were
trained (their input size, crop, interpolation, mean and std: timm's pretrained config, as
`imgcls train --pretrained` uses) and the network's pooled features (timm's num_classes=0
head) are what the label model sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import ConfigError
from imgcls.progress import progress

log = logging.getLogger("imgcls")

# The model `--pretrained imagenet` (or a weights file) means when --model is not given: small
# (4.7M parameters, ~0.4 GFLOPs an image at 224 px) so a CPU embeds a few thousand images a minute.
DEFAULT_MODEL = "tf_efficientnet_lite0"
BATCH = 32


@dataclass(frozen=True)
class FeatureNet:
    """A pretrained network without its classifier, and how its inputs are prepared."""

    model: object  # torch.nn.Module, in eval mode
    architecture: str
    source: str  # "hf-hub:timm/ARCH.TAG" or the weights file
    sha256: str
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float

    def describe(self) -> dict:
        return {
            "architecture": self.architecture,
            "weights": self.source,
            "sha256": self.sha256,
            "input": {"img_size": self.img_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation},
        }


def default_model(spec: str) -> str:
    """The architecture a --pretrained value names (`resnet18.a1_in1k` -> resnet18), else DEFAULT_MODEL."""
    from imgcls.models.pretrained import DEFAULT_TAG, HUB_PREFIXES, is_weights_name

    if not is_weights_name(spec) or spec == DEFAULT_TAG:
        return DEFAULT_MODEL
    name = spec
    for prefix in HUB_PREFIXES:
        name = name.removeprefix(prefix)
    return name.removeprefix("timm/").split(".")[0]


def load_feature_net(spec: str, model_name: str | None = None) -> FeatureNet:
    """The network of --model (default: from the weights' name) with --pretrained's weights loaded.

    Named weights are fetched into the Hugging Face cache (offline and not cached: a one-line
    error); a file is loaded by name, or by position when another implementation wrote it."""
    import timm

    from imgcls.models.pretrained import data_config, resolve_start_weights
    from imgcls.models.registry import timm_architecture
    from imgcls.models.weights import load_pretrained

    model_name = model_name or default_model(spec)
    arch = timm_architecture(model_name)
    if arch is None:
        raise ConfigError(f"--model {model_name}: the doctor's feature model must be a timm architecture.")
    start = resolve_start_weights(spec, arch)
    cfg = start.data_config or data_config(arch)  # an imgcls checkpoint: its architecture's defaults
    if not cfg:
        raise ConfigError(f"timm gives no input size or mean/std for {arch}; choose another --model.")
    model = timm.create_model(arch, pretrained=False, num_classes=0)  # forward() gives pooled features
    load_pretrained(model, start.file)
    return FeatureNet(
        model=model.eval(),
        architecture=arch,
        source=start.source,
        sha256=start.sha256,
        img_size=int(cfg["img_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
    )


def embed_files(net: FeatureNet, paths: list[str], *, max_pixels: int = 64_000_000) -> np.ndarray:
    """(n, features) float32: each file decoded as the weights expect, through the network."""
    import torch

    from imgcls.data.decode import decode_image

    mean = np.asarray(net.mean, dtype=np.float32)
    std = np.asarray(net.std, dtype=np.float32)
    out = []
    starts = range(0, len(paths), BATCH)
    with torch.inference_mode():
        for start in progress(starts, total=len(starts), desc="features", unit="batch"):
            batch = np.stack(
                [
                    decode_image(
                        Path(path),
                        size=net.img_size,
                        resize="crop",
                        channels=3,
                        crop_pct=net.crop_pct,
                        interpolation=net.interpolation,
                        max_pixels=max_pixels,
                    )
                    for path in paths[start : start + BATCH]
                ]
            )
            x = (batch.astype(np.float32) / 255.0 - mean) / std
            out.append(net.model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
