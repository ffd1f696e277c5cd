"""Loss functions."""

from __future__ import annotations

from torch import nn


def build_loss(label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy, optionally with label smoothing (Szegedy et al. 2016)."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
