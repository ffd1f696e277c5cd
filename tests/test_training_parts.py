"""The pieces a training step is made of: augmentation, preprocessing, batching, optimizer, schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.config import AugmentConfig, OptimConfig, build_config
from imgcls.data.augment import augment_batch
from imgcls.data.loader import batch_indices, steps_per_epoch
from imgcls.data.preprocess import Preprocessing, channel_stats, to_model_input
from imgcls.errors import ConfigError
from imgcls.training.optim import build_optimizer, build_schedule, lr_factor, parameter_groups


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct_images(n: int, size: int = 8, channels: int = 3) -> torch.Tensor:
    """(N, H, W, C) uint8 images whose pixels are all different within each image, so that
    where a pixel came from can be read off its value."""
    base = torch.randperm(256, generator=gen(1))[: size * size * channels].to(torch.uint8)
    images = base.reshape(1, size, size, channels).repeat(n, 1, 1, 1)
    return images.roll(shifts=1, dims=0) if n > 1 else images  # identical images, differently augmented


def candidates(image: np.ndarray, max_shift: int, flips: bool) -> list[np.ndarray]:
    """Every image reachable by a shift of up to max_shift with reflect padding (no edge
    repeat, as np.pad's 'reflect'), optionally mirrored."""
    h, w, _ = image.shape
    padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="reflect")
    out = []
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            crop = padded[max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]
            out.append(crop)
            if flips:
                out.append(crop[:, ::-1])
    return out


# --- augment_batch ---------------------------------------------------------------------


def test_augment_keeps_shape_dtype_and_pixel_values():
    images = torch.randint(0, 256, (16, 12, 10, 3), dtype=torch.uint8, generator=gen(2))
    out = augment_batch(images, AugmentConfig(hflip=True, translate=0.25), gen(3))
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    for before, after in zip(images, out, strict=True):
        assert set(after.flatten().tolist()) <= set(before.flatten().tolist())  # reflection only copies pixels
    assert not torch.equal(out, images)


def test_augment_output_is_a_reflected_shift_or_its_mirror():
    images = distinct_images(12)
    out = augment_batch(images, AugmentConfig(hflip=True, translate=0.25), gen(4))  # 8 px: up to 2 px shift
    seen_shifts = set()
    for before, after in zip(images.numpy(), out.numpy(), strict=True):
        matches = [i for i, c in enumerate(candidates(before, 2, flips=True)) if np.array_equal(c, after)]
        assert matches, "output is not a reflect-padded shift (optionally flipped) of its input"
        seen_shifts.add(matches[0])
    assert len(seen_shifts) > 1  # shifts are drawn per image


def test_augment_without_shift_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 9, 9, 1), dtype=torch.uint8, generator=gen(5))
    out = augment_batch(images, AugmentConfig(hflip=False, translate=0.0), gen(6))
    assert torch.equal(out, images)


def test_flip_only_gives_the_image_or_its_mirror():
    images = torch.randint(0, 256, (64, 6, 7, 3), dtype=torch.uint8, generator=gen(7))
    out = augment_batch(images, AugmentConfig(hflip=True, translate=0.0), gen(8))
    flipped = 0
    for before, after in zip(images, out, strict=True):
        mirror = before.flip(dims=[1])
        assert torch.equal(after, before) or torch.equal(after, mirror)
        flipped += int(torch.equal(after, mirror))
    assert 0 < flipped < 64  # drawn per image (all-or-none has probability 2**-63)


def test_augment_is_deterministic_for_a_seed():
    images = torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8, generator=gen(9))
    config = AugmentConfig(hflip=True, translate=0.125)
    first = augment_batch(images, config, gen(10))
    again = augment_batch(images, config, gen(10))
    other = augment_batch(images, config, gen(11))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augment_handles_one_pixel_wide_images():
    images = torch.arange(5, dtype=torch.uint8).reshape(1, 5, 1, 1).repeat(3, 1, 1, 1)
    out = augment_batch(images, AugmentConfig(hflip=True, translate=0.4), gen(12))
    assert out.shape == images.shape


# --- preprocessing ---------------------------------------------------------------------


def test_to_model_input_layout_and_values():
    images = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8, generator=gen(13))
    pre = Preprocessing(img_size=5, channels=3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = to_model_input(images, pre)
    assert x.shape == (2, 3, 5, 4)
    assert x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = images.permute(0, 3, 1, 2).double() / 255.0 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1).double()
    expected = expected / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1).double()
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)

    nchw = to_model_input(images, pre, channels_last=False)
    assert nchw.is_contiguous()
    assert torch.equal(nchw, x)

    # Known pixels: 0 and 255 with mean 0.5, std 0.5 give -1 and +1.
    grey = Preprocessing(img_size=1, channels=1, mean=(0.5,), std=(0.5,))
    values = to_model_input(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1), grey)
    torch.testing.assert_close(values.flatten(), torch.tensor([-1.0, 1.0]))


def test_preprocessing_dict_round_trip():
    pre = Preprocessing(img_size=28, channels=1, mean=(0.2860,), std=(0.3530,), resize="pad")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    as_lists = {**pre.to_dict(), "mean": [0.2860], "std": [0.3530]}  # as JSON gives them back
    assert Preprocessing.from_dict(as_lists) == pre


def test_channel_stats_of_a_constant_image():
    images = np.full((3, 4, 4, 3), 51, dtype=np.uint8)
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.2, 0.2, 0.2))
    assert all(s > 0 for s in std)  # safe to divide by
    assert all(s <= 1e-3 + 1e-9 for s in std)


def test_channel_stats_known_values_and_chunking():
    images = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    images[:2, ..., 0] = 255  # channel 0: half 1.0, half 0.0 -> mean 0.5, std 0.5
    images[..., 1] = 102  # channel 1: constant 0.4
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5, 0.4))
    assert std[0] == pytest.approx(0.5)
    for chunk in (1, 3):
        chunk_mean, chunk_std = channel_stats(images, chunk=chunk)
        assert chunk_mean == pytest.approx(mean)
        assert chunk_std == pytest.approx(std)


def test_channel_stats_equal_numpy_on_random_images():
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    pixels = images.reshape(-1, 3) / 255.0
    for chunk in (2, 8192):
        mean, std = channel_stats(images, chunk=chunk)
        assert mean == pytest.approx(tuple(pixels.mean(0)), abs=1e-12)
        assert std == pytest.approx(tuple(pixels.std(0)), abs=1e-12)


# --- batching --------------------------------------------------------------------------


def test_batch_indices_without_shuffle_cover_everything_in_order():
    batches = list(batch_indices(10, 3, shuffle=False))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert torch.cat(batches).tolist() == list(range(10))


def test_batch_indices_with_shuffle_drop_short_last_batch():
    batches = list(batch_indices(10, 3, shuffle=True, generator=gen(14)))
    assert [len(b) for b in batches] == [3, 3, 3]
    flat = torch.cat(batches).tolist()
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert flat != sorted(flat)


def test_batch_indices_shuffle_is_deterministic_for_a_seed():
    first = torch.cat(list(batch_indices(50, 7, shuffle=True, generator=gen(15))))
    again = torch.cat(list(batch_indices(50, 7, shuffle=True, generator=gen(15))))
    other = torch.cat(list(batch_indices(50, 7, shuffle=True, generator=gen(16))))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 9, 20, 21])
def test_steps_per_epoch_matches_shuffled_batches(n):
    batches = list(batch_indices(n, 4, shuffle=True, generator=gen(n)))
    assert len(batches) == steps_per_epoch(n, 4)
    assert all(len(b) > 0 for b in batches)
    flat = torch.cat(batches).tolist()
    assert len(set(flat)) == len(flat)  # no index twice in an epoch


# --- schedule --------------------------------------------------------------------------


def test_lr_factor_warmup_then_cosine():
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup, "cosine") == pytest.approx(0.01)
    rising = [lr_factor(s, total, warmup, "cosine") for s in range(warmup + 1)]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert lr_factor(warmup, total, warmup, "cosine") == pytest.approx(1.0)
    falling = [lr_factor(s, total, warmup, "cosine") for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(falling, falling[1:], strict=False))
    assert lr_factor(total - 1, total, warmup, "cosine") < 0.01
    assert lr_factor(total, total, warmup, "cosine") == pytest.approx(0.0, abs=1e-12)
    midway = warmup + (total - warmup) // 2
    assert lr_factor(midway, total, warmup, "cosine") == pytest.approx(0.5)


def test_lr_factor_constant_and_no_warmup():
    assert lr_factor(0, 50, 5, "constant") == pytest.approx(0.01)
    assert lr_factor(5, 50, 5, "constant") == 1.0
    assert lr_factor(49, 50, 5, "constant") == 1.0
    assert lr_factor(0, 50, 0, "cosine") == pytest.approx(1.0)
    assert math.isfinite(lr_factor(0, 1, 0, "cosine"))


def test_build_schedule_drives_the_optimizer_lr():
    model = nn.Linear(3, 1)
    config = OptimConfig(name="sgd", lr=0.1, warmup_epochs=1.0, schedule="cosine")
    optimizer = build_optimizer(model, config)
    scheduler, plateau = build_schedule(optimizer, config, steps_per_epoch=4, epochs=3)
    assert plateau is None
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[4] == pytest.approx(0.1)  # warm-up over one epoch of 4 steps
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.01
    assert all(group["lr"] == optimizer.param_groups[0]["lr"] for group in optimizer.param_groups)


# --- optimizer -------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_biases_and_norms_get_no_weight_decay(name):
    model = Tiny()
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.01, weight_decay=0.05))
    decays = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decays[id(p)] = group["weight_decay"]
    named = dict(model.named_parameters())
    assert decays[id(named["conv.weight"])] == 0.05
    assert decays[id(named["fc.weight"])] == 0.05
    for key in ["conv.bias", "norm.weight", "norm.bias", "ln.weight", "ln.bias", "fc.bias"]:
        assert decays[id(named[key])] == 0.0, key
    assert id(named["frozen.weight"]) in decays  # frozen: no gradient now, but ready to be unfrozen
    assert len(decays) == len(named)
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)
    expected_type = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    assert type(optimizer) is expected_type


def test_sgd_settings_are_passed_on():
    optimizer = build_optimizer(Tiny(), OptimConfig(name="sgd", lr=0.2, momentum=0.8, nesterov=False))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.2, 0.8, False)


def test_parameter_groups_partition_all_parameters():
    """Frozen ones too: a fine-tuning run that unfreezes them later must find them there."""
    model = Tiny()
    next(model.parameters()).requires_grad = False
    groups = parameter_groups(model, 0.1, lr=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(g["lr"] == 0.01 for g in groups)


def test_every_valid_config_builds_an_optimizer():
    """A config that validates must not crash later, when the optimizer is built.
    SGD with momentum 0 keeps the default nesterov=True, which torch refuses."""
    try:
        config = build_config(overrides={"optim": {"name": "sgd", "momentum": 0.0}})
    except ConfigError:
        return  # refusing it at validation is fine too
    optimizer = build_optimizer(nn.Linear(2, 1), config.optim)
    assert optimizer.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("adamw", 0.05)])
def test_a_few_steps_lower_a_toy_regression_loss(name, lr):
    g = gen(17)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5], [3.0]]) + 0.7
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.01))

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    start = loss().item()
    for _ in range(20):
        optimizer.zero_grad()
        current = loss()
        current.backward()
        optimizer.step()
    end = loss().item()
    assert end < 0.5 * start


def test_validation_runs_in_eval_mode_and_leaves_batch_norm_alone():
    """Batch statistics of the validation images must neither decide the scores nor end up
    in the saved running statistics; the model goes back to training mode afterwards."""
    from imgcls.training.validate import evaluate

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(3))
    model(torch.zeros(2, 1, 8, 8))
    model[1].running_mean.fill_(5.0)  # far from any batch's own statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = distinct_images(16, size=8, channels=1)
    labels = torch.arange(16) % 3
    pre = Preprocessing(8, 1, (0.5,), (0.25,))
    model.train()
    _, _, probs = evaluate(model, images, labels, pre, batch_size=8, channels_last=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        expected = model(to_model_input(images, pre, channels_last=False)).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-6)
