"""The preprocessing that travels with a model's weights, and its one implementation.

Training, evaluation, prediction, export and serving all turn pixels into model input
through `to_model_input`, with the values stored in the checkpoint, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.data.decode import decode_image
from imgcls.device import constant


@dataclass(frozen=True)
class Preprocessing:
    img_size: int
    channels: int  # 1 or 3
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    resize: str = "crop"  # see imgcls.data.decode.resize_square
    max_pixels: int = 64_000_000
    # What pretrained weights were trained with (timm's pretrained config): the share of the
    # shorter side the centre crop keeps, and the resampling filter.
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    # Test-time augmentation: logits are the mean of the image's and its mirror image's
    # (twice the inference cost). Part of the model's preprocessing, so predict, evaluate,
    # serve and the ONNX graph all apply it.
    test_flip: bool = False

    def __post_init__(self) -> None:
        # These values come from checkpoint metadata, which anyone can write: a bad one must be
        # refused here, before it sizes a model or an image (img_size=60000 asked for 14 GB).
        problem = _problem(self)
        if problem:
            raise ValueError(f"preprocessing: {problem}")

    def to_dict(self) -> dict:
        return asdict(self)

    def decode(self, source: Path | bytes, *, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        """Pixels as the model takes them; `max_pixels` may only lower the model's own limit."""
        limit = min(max_pixels or self.max_pixels, self.max_pixels)
        return decode_image(
            source,
            size=self.img_size,
            resize=self.resize,
            channels=self.channels,
            max_pixels=limit,
            name=name,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
        )

    def scale_shift(self) -> tuple[list[float], list[float]]:
        """Per channel, model input = pixel * scale - shift, i.e. (pixel / 255 - mean) / std."""
        scale = [1.0 / (255.0 * s) for s in self.std]
        shift = [m / s for m, s in zip(self.mean, self.std, strict=True)]
        return scale, shift

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        values = dict(values)
        values["mean"] = tuple(float(m) for m in values["mean"])
        values["std"] = tuple(float(s) for s in values["std"])
        return cls(**values)


MAX_IMG_SIZE = 4096  # data.img_size's upper bound: a 4096 x 4096 x 3 float input is 200 MB


def _problem(pre: Preprocessing) -> str | None:
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(pre.img_size) or not 1 <= pre.img_size <= MAX_IMG_SIZE:
        return f"img_size must be a whole number in [1, {MAX_IMG_SIZE}], not {pre.img_size!r}"
    if pre.channels not in (1, 3) or isinstance(pre.channels, bool):
        return f"channels must be 1 or 3, not {pre.channels!r}"
    if len(pre.mean) != pre.channels or len(pre.std) != pre.channels:
        return f"mean and std need one value per channel ({pre.channels})"
    if not all(np.isfinite(m) for m in pre.mean) or not all(np.isfinite(s) and s > 0 for s in pre.std):
        return f"mean must be finite and std positive, not {list(pre.mean)} / {list(pre.std)}"
    if not whole(pre.max_pixels) or pre.max_pixels <= 0:
        return f"max_pixels must be a positive whole number, not {pre.max_pixels!r}"
    if pre.resize not in ("crop", "squash", "pad"):
        return f"resize must be crop, squash or pad, not {pre.resize!r}"
    return None


# Pixels per chunk of channel_stats: one channel's copy of a chunk is 16 MB at most.
STATS_CHUNK_PIXELS = 1 << 24


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of (N, H, W, C) uint8 images, exact, from each
    channel's 256-bin histogram (torch.bincount), `chunk` images at a time at most so memory stays
    bounded. Summing float64 copies took 7.4 s on 1,000 224-px photos; the histograms take 0.2 s."""
    n, height, width, channels = images.shape
    rows = max(1, min(chunk, STATS_CHUNK_PIXELS // max(1, height * width)))
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, n, rows):
        block = images[start : start + rows]
        for c in range(channels):
            values = torch.from_numpy(np.ascontiguousarray(block[..., c]).reshape(-1))
            counts[c] += torch.bincount(values, minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1).clamp(min=1)
    mean = counts @ levels / total
    std = (counts @ levels.square() / total - mean.square()).clamp(min=1e-12).sqrt()
    std = std.clamp(min=1e-3)  # a constant channel must not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def to_model_input(
    images: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N, H, W, C) uint8 pixels to the normalised (N, C, H, W) float tensor a model takes.

    The permuted view already has channels_last strides, so that layout costs nothing.
    """
    scale, shift = (constant(tuple(v), images.device, dtype) for v in preprocessing.scale_shift())
    x = (images.to(dtype) * scale - shift).permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()
