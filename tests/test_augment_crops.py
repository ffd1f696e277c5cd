"""apply_per_image's threaded path for a lone RandomResizedCrop gives exactly the crops that
calling the torchvision transform image by image gives, and leaves the global RNG where that
loop leaves it (so the rest of a seeded run is unchanged)."""

from __future__ import annotations

import pytest
import torch

import imgcls.data.augment as augment
from imgcls.config import AugmentConfig


def _images(count: int, size: int, channels: int = 3) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, size, size, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _one_by_one(images: torch.Tensor, transform) -> torch.Tensor:
    chw = images.permute(0, 3, 1, 2)
    return torch.stack([transform(image) for image in chw]).permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("channels", [3, 1])
def test_threaded_crops_equal_the_transform_called_per_image(channels):
    transform = augment.build_per_image_transform(AugmentConfig(random_resized_crop=0.35), 24)
    assert augment._lone_random_resized_crop(transform) is not None  # the threaded path is taken
    images = _images(13, 30, channels)
    torch.manual_seed(5)
    threaded, after_threaded = augment.apply_per_image(images, transform), torch.rand(3)
    torch.manual_seed(5)
    looped, after_loop = _one_by_one(images, transform), torch.rand(3)
    assert threaded.shape == (13, 24, 24, channels) and threaded.dtype == torch.uint8
    assert torch.equal(threaded, looped)
    assert torch.equal(after_threaded, after_loop)  # the same number of draws from the global RNG
    assert not torch.equal(threaded[0], threaded[1])  # each image its own crop


def test_other_transforms_keep_the_plain_loop():
    with_colour = augment.build_per_image_transform(AugmentConfig(random_resized_crop=0.35, brightness=0.2), 24)
    assert augment._lone_random_resized_crop(with_colour) is None
    images = _images(5, 30)
    torch.manual_seed(2)
    out = augment.apply_per_image(images, with_colour)
    torch.manual_seed(2)
    assert torch.equal(out, _one_by_one(images, with_colour))
