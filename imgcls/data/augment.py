"""Batch-level augmentation of uint8 image tensors during training.

Random shifts and flips are applied to a whole batch in one indexing operation, with
parameters drawn per image. This is written by hand because torchvision.transforms.v2
draws one set of parameters per call: per-image randomness through it would mean a
Python loop over images, the per-sample cost that makes the usual pipeline slow on CPU.
"""

from __future__ import annotations

import torch

from imgcls.config import AugmentConfig


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range pixel indices back inside [0, size) (reflect padding, no edge repeat)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift (with reflection) and flip each image of an (N, H, W, C) uint8 batch."""
    n, height, width, _ = images.shape
    max_shift = round(config.translate * min(height, width))
    if max_shift == 0 and not config.hflip:
        return images
    rows = torch.arange(height).expand(n, height)
    cols = torch.arange(width).expand(n, width)
    if max_shift:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        rows = _reflect(rows + shifts[:, :1], height)
        cols = _reflect(cols + shifts[:, 1:], width)
    if config.hflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, width - 1 - cols, cols)
    batch_index = torch.arange(n)[:, None, None]
    return images[batch_index, rows[:, :, None], cols[:, None, :]]
