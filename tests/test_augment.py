"""Augmentation: batch shifts and flips, per-image torchvision transforms, Mixup/CutMix/RICAP."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from imgcls.config import AugmentConfig
from imgcls.data.augment import (
    apply_per_image,
    augment_batch,
    build_per_image_transform,
    mix_batch,
    mixing_enabled,
)

OFF = AugmentConfig(hflip=False, vflip=False, translate=0.0)  # every augmentation off


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int = 8, size: int = 16, channels: int = 3, seed: int = 0, low: int = 0) -> torch.Tensor:
    return torch.randint(low, 256, (n, size, size, channels), dtype=torch.uint8, generator=gen(seed))


def off(**changes) -> AugmentConfig:
    return dataclasses.replace(OFF, **changes)


# --- augment_batch ---------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "config",
    [
        off(hflip=True),
        off(vflip=True),
        off(translate=0.25),
        off(translate=0.25, fill="constant"),
        AugmentConfig(hflip=True, vflip=True, translate=0.25, fill="constant"),
    ],
)
def test_augment_batch_keeps_shape_and_dtype(config, channels):
    images = random_images(channels=channels)
    out = augment_batch(images, config, gen(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_cutout_zeroes_one_square_per_image_and_keeps_the_rest():
    images = random_images(64, size=20, low=1)  # no zero pixel in the input
    out = augment_batch(images, off(cutout=0.3), gen(5))  # a 6 x 6 square, possibly cut by the border
    assert out.shape == images.shape and out.dtype == torch.uint8
    centre_hit = 0
    for before, after in zip(images, out, strict=True):
        zero = (after == 0).all(-1)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 6 and 0 < len(cols) <= 6
        # Exactly one axis-aligned block is zero; every other pixel is untouched.
        block = torch.zeros_like(zero)
        block[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(zero, block)
        assert torch.equal(after[~zero], before[~zero])
        centre_hit += int(len(rows) == 6 and len(cols) == 6)
    assert 0 < centre_hit < 64  # whole squares inside the image, others cut by the border
    assert torch.equal(augment_batch(images, off(cutout=0.3), gen(5)), out)  # the generator decides


def test_vflip_gives_the_image_or_its_upside_down_mirror():
    images = random_images(64, size=7)
    out = augment_batch(images, off(vflip=True), gen(2))
    flipped = 0
    for before, after in zip(images, out, strict=True):
        assert torch.equal(after, before) or torch.equal(after, before.flip(0))
        flipped += int(torch.equal(after, before.flip(0)))
    assert 0 < flipped < 64


def test_both_flips_give_one_of_four_mirrors():
    images = random_images(64, size=7)
    out = augment_batch(images, off(hflip=True, vflip=True), gen(3))
    kinds = set()
    for before, after in zip(images, out, strict=True):
        mirrors = [before, before.flip(1), before.flip(0), before.flip(0).flip(1)]
        matches = [i for i, m in enumerate(mirrors) if torch.equal(after, m)]
        assert matches
        kinds.add(matches[0])
    assert kinds == {0, 1, 2, 3}


def test_constant_fill_puts_zeros_on_the_border_and_reflect_does_not():
    images = random_images(32, size=16, low=1)  # no zero pixel in the input
    reflect = augment_batch(images, off(translate=0.25), gen(4))
    assert (reflect > 0).all()
    constant = augment_batch(images, off(translate=0.25, fill="constant"), gen(4))
    zeros = constant == 0
    assert zeros.any()
    for z in zeros.all(dim=-1):  # (H, W): zero pixels form whole rows and columns at the border
        rows, cols = z.all(dim=1), z.all(dim=0)
        assert torch.equal(z, rows[:, None] | cols[None, :])
        for line in (rows, cols):
            k = int(line.sum())
            assert line[:k].all() or line[len(line) - k :].all()
    # Where nothing was filled in, the same shift shows the same pixels as with reflection.
    assert torch.equal(constant[~zeros], reflect[~zeros])


def test_augment_batch_is_deterministic_for_a_seed():
    images = random_images(32)
    config = AugmentConfig(hflip=True, vflip=True, translate=0.125, fill="constant")
    first, again = augment_batch(images, config, gen(5)), augment_batch(images, config, gen(5))
    assert torch.equal(first, again)
    assert not torch.equal(first, augment_batch(images, config, gen(6)))


# --- per-image transforms ------------------------------------------------------------------

SINGLE_OPS = [
    {"rotation": 30.0},
    {"shear": 30.0},
    {"zoom": 0.3},
    {"brightness": 0.5},
    {"contrast": 0.5},
    {"random_resized_crop": 0.35},
    {"auto_augment": "randaugment"},
    {"auto_augment": "trivialaugment"},
    {"auto_augment": "autoaugment"},
    {"random_erasing": 1.0},
]


def test_per_image_transform_is_none_when_all_off():
    assert build_per_image_transform(AugmentConfig(), 16) is None
    images = random_images()
    assert apply_per_image(images, None) is images


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("changes", SINGLE_OPS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_each_per_image_op_alone_changes_images_and_keeps_shape(changes, channels):
    transform = build_per_image_transform(off(**changes), 16)
    assert transform is not None
    images = random_images(8, size=16, channels=channels, seed=7)
    torch.manual_seed(0)
    out = apply_per_image(images, transform)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_random_erasing_with_p1_erases_every_image():
    images = random_images(16, size=16, low=1)
    torch.manual_seed(1)
    out = apply_per_image(images, build_per_image_transform(off(random_erasing=1.0), 16))
    for before, after in zip(images, out, strict=True):
        assert (after == 0).any()
        assert torch.equal(after[after != 0], before[after != 0])  # only the erased part changed


def test_saturation_changes_colour_images_and_leaves_grey_ones_alone():
    transform = build_per_image_transform(off(saturation=0.9), 16)
    torch.manual_seed(2)
    assert not torch.equal(apply_per_image(random_images(8, channels=3), transform), random_images(8, channels=3))
    grey = random_images(8, channels=1)
    assert torch.equal(apply_per_image(grey, transform), grey)  # torchvision skips saturation for 1 channel


def test_per_image_transform_is_deterministic_under_manual_seed():
    config = off(rotation=20.0, zoom=0.2, brightness=0.3, auto_augment="randaugment", random_erasing=0.5)
    transform = build_per_image_transform(config, 16)
    images = random_images(16, channels=1)
    torch.manual_seed(3)
    first = apply_per_image(images, transform)
    torch.manual_seed(3)
    assert torch.equal(first, apply_per_image(images, transform))
    torch.manual_seed(4)
    assert not torch.equal(first, apply_per_image(images, transform))


def test_apply_per_image_restores_the_thread_count():
    before = torch.get_num_threads()
    apply_per_image(random_images(2), build_per_image_transform(off(rotation=10.0), 16))
    assert torch.get_num_threads() == before


# --- mix_batch ---------------------------------------------------------------------------


def labelled_constants(n: int = 8, channels: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and has label i, so a pixel tells which image it came from."""
    targets = torch.arange(n)
    return targets.float()[:, None, None, None].expand(n, channels, size, size).contiguous(), targets


def pixel_shares(x: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n): share of each image's pixels showing the value c (of labelled_constants)."""
    return torch.stack([(x == c).flatten(1).float().mean(1) for c in range(n)], dim=1)


def test_mixing_enabled():
    assert not mixing_enabled(AugmentConfig())
    assert mixing_enabled(AugmentConfig(mixup=0.2)) and mixing_enabled(AugmentConfig(ricap=0.3))
    assert not mixing_enabled(AugmentConfig(cutmix=1.0, mix_prob=0.0))


@pytest.mark.parametrize("config", [AugmentConfig(), AugmentConfig(mixup=1.0, cutmix=1.0, ricap=0.3, mix_prob=0.0)])
def test_unmixed_batches_come_back_with_one_hot_targets(config):
    x = torch.randn(6, 3, 8, 8, generator=gen(8))
    targets = torch.tensor([2, 0, 1, 4, 4, 3])
    out, soft = mix_batch(x, targets, 5, config, gen(9))
    assert out is x
    assert soft.shape == (6, 5) and soft.dtype == torch.float32
    assert torch.equal(soft, torch.nn.functional.one_hot(targets, 5).float())
    assert torch.equal(soft.argmax(1), targets)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", ["mixup", "cutmix", "ricap"])
def test_soft_targets_sum_to_one_and_shapes_hold(method, channels):
    x = torch.randn(8, channels, 12, 12, generator=gen(10))
    config = AugmentConfig(**{method: 1.0})
    for seed in range(5):
        out, soft = mix_batch(x, torch.randint(0, 4, (8,), generator=gen(seed)), 4, config, gen(seed))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert soft.shape == (8, 4)
        torch.testing.assert_close(soft.sum(1), torch.ones(8))


def test_mixup_is_the_lambda_blend_of_two_images():
    x = torch.randn(8, 3, 6, 6, generator=gen(11))
    targets = torch.arange(8)
    blended = 0
    for seed in range(4):
        out, soft = mix_batch(x, targets, 8, AugmentConfig(mixup=1.0), gen(seed))
        # Row i's weights say lam on image i and 1 - lam on its partner: out[i] = sum_c w[i, c] x[c].
        torch.testing.assert_close(out, torch.einsum("nc,chwk->nhwk", soft, x))
        assert ((soft > 0).sum(1) <= 2).all()
        blended += int(((soft > 0).sum(1) == 2).any())
    assert blended


@pytest.mark.parametrize("method", ["cutmix", "ricap"])
def test_cut_and_paste_weights_equal_the_pasted_areas(method):
    n = 8
    x, targets = labelled_constants(n)
    for seed in range(6):
        out, soft = mix_batch(x, targets, n, AugmentConfig(**{method: 1.0}), gen(seed))
        assert set(out.unique().tolist()) <= set(range(n))  # pixels are copied, never blended
        torch.testing.assert_close(soft, pixel_shares(out, n))
        assert ((soft > 0).sum(1) <= (2 if method == "cutmix" else 4)).all()


def test_cutmix_pastes_one_rectangle():
    x, targets = labelled_constants(8)
    out, soft = mix_batch(x, targets, 8, AugmentConfig(cutmix=1.0), gen(12))
    changed = (out != x)[:, 0]  # (N, H, W)
    if changed.any():
        box = changed.any(0)
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


def test_ricap_patches_meet_at_one_boundary_point():
    n, size = 8, 16
    x, targets = labelled_constants(n, size=size)
    for seed in range(6):
        out, soft = mix_batch(x, targets, n, AugmentConfig(ricap=1.0), gen(seed))
        # Each of the four quadrants around the boundary is one source image per output image,
        # so every row and every column of an output shows at most two values.
        img = out[:, 0]
        for i in range(n):
            assert all(len(r.unique()) <= 2 for r in img[i]) and all(len(c.unique()) <= 2 for c in img[i].T)


def test_mix_prob_and_the_choice_among_methods():
    x, targets = labelled_constants(8)
    config = AugmentConfig(mixup=1.0, cutmix=1.0, mix_prob=0.5)
    g = gen(13)
    kinds = set()
    for _ in range(40):
        out, soft = mix_batch(x, targets, 8, config, g)
        if out is x:
            kinds.add("none")
        elif torch.equal(out, out.round()):
            kinds.add("cutmix")
        else:
            kinds.add("mixup")
    assert kinds == {"none", "mixup", "cutmix"}


def test_mix_batch_is_deterministic_for_a_seed():
    x = torch.randn(8, 3, 10, 10, generator=gen(14))
    targets = torch.randint(0, 5, (8,), generator=gen(15))
    config = AugmentConfig(mixup=0.4, cutmix=1.0, ricap=0.3)
    for seed in range(3):
        a, sa = mix_batch(x, targets, 5, config, gen(seed))
        b, sb = mix_batch(x, targets, 5, config, gen(seed))
        assert torch.equal(a, b) and torch.equal(sa, sb)
