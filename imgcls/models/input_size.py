"""The smallest input side a network accepts, found by trying: forward passes on PyTorch's meta
device (shapes only, nothing computed or allocated), bisected over the side.

timm and torchvision state no minimum input size (timm's pretrained config gives the size the
weights were trained at, not the smallest that runs), and an input too small for a network
only shows as a RuntimeError deep inside its forward (inception_v3 at 32 px: "Kernel size
can't be greater than actual input size"). A few meta forwards tell it before any image is
decoded: inception_v3 75 px, convnext_atto 32 px, vit_tiny_patch16_224 16 px.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

LARGEST_TRIED = 1024  # a network refusing even this is refused for another reason: no minimum then


def _accepts(model: nn.Module, side: int) -> bool:
    try:
        model(torch.zeros(2, model_in_chans(model), side, side, device="meta"))  # 2: batch norm needs two
    except (RuntimeError, ValueError, AssertionError, IndexError):  # what a too small input raises in torch and timm
        return False
    return True


def model_in_chans(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def smallest_side(build: Callable[[int], nn.Module], *, size_dependent: bool) -> int | None:
    """The smallest side s at which build(s) accepts s x s inputs, or None when it cannot be
    told (the network cannot be built on the meta device, or refuses every side). `build(side)`
    builds the network for that side; a size_dependent network (a ViT's position embeddings)
    is built again for every side tried, any other once."""
    cache: dict[int, nn.Module] = {}

    def accepts(side: int) -> bool:
        key = side if size_dependent else 0
        try:
            if key not in cache:
                with torch.device("meta"):
                    cache[key] = build(side).eval()
        except Exception as err:  # noqa: BLE001 - a builder that refuses the side, or cannot run on meta
            log.debug("cannot build the network for %d px on the meta device: %s", side, err)
            return False
        return _accepts(cache[key], side)

    if accepts(1):  # most convnets pool down to any size: two tries, no bisection
        return 1
    if not accepts(LARGEST_TRIED):
        return None
    low, high = 0, LARGEST_TRIED  # low refused (or nothing), high accepted
    while high - low > 1:
        middle = (low + high) // 2
        if accepts(middle):
            high = middle
        else:
            low = middle
    return high
