"""Batches from an in-memory cache: seeded shuffling, no worker processes.

The data is already decoded, so a DataLoader's worker processes would only compete with
the two compute threads for the same two cores (see the shared performance notes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from imgcls.data.cache import ImageCache


def cache_tensors(cache: ImageCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy torch views of a cache's images (N, H, W, C) uint8 and labels (N,)."""
    return torch.from_numpy(np.ascontiguousarray(cache.images)), torch.from_numpy(cache.labels)


def batch_indices(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over n items. When shuffling, a short last batch is dropped so that
    BatchNorm never sees a batch of one and every step has the same weight."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if shuffle and n > batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n > batch_size else 1


def balanced_batch_indices(
    labels: torch.Tensor, batch_size: int, *, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Batches drawn with replacement so each class is equally likely (for imbalanced data);
    an epoch has as many full batches as the plain sampler would give."""
    counts = torch.bincount(labels).float()
    weights = (1.0 / counts.clamp_min(1))[labels]
    n = len(labels) - len(labels) % batch_size if len(labels) > batch_size else len(labels)
    order = torch.multinomial(weights, n, replacement=True, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
