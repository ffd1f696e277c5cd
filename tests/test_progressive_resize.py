"""Progressive resizing: early epochs train on smaller images, the last at the run's size.

Auto (train.progressive_resize unset) turns it on only for a network learning from random
weights at photo sizes that takes the smaller input; a fraction set by hand that the model
cannot take stops the run in one line."""

from __future__ import annotations

import pytest

from imgcls.cli.main import main
from imgcls.config import build_config
from imgcls.errors import ConfigError
from imgcls.models import create_model
from imgcls.training.optim import epoch_side
from imgcls.training.run import AUTO_PROGRESSIVE_START, progressive_resize


def test_sides_grow_from_the_fraction_to_the_full_size():
    assert [epoch_side(224, 0.5, e, 5) for e in range(1, 6)] == [112, 144, 160, 192, 224]
    assert [epoch_side(224, 0.0, e, 5) for e in range(1, 6)] == [224] * 5
    assert epoch_side(224, 0.5, 1, 1) == 224  # one epoch: the full size
    sides = [epoch_side(300, 0.4, e, 30) for e in range(1, 31)]
    assert sides == sorted(sides) and sides[-1] == 300 and all(s % 16 == 0 for s in sides[:-1])


def _config(**train):
    return build_config(overrides={"data": {"img_size": 128}, "model": {"name": "resnet10t"}, "train": train})


def test_auto_is_on_from_random_weights_at_photo_sizes_only():
    config = _config(epochs=5)
    model = create_model("resnet10t", num_classes=3, in_chans=3, img_size=128)
    assert progressive_resize(config, model, 3, "cpu") == AUTO_PROGRESSIVE_START
    small = build_config(overrides={"data": {"img_size": 64}, "model": {"name": "resnet10t"}})
    assert progressive_resize(small, model, 3, "cpu") == 0.0  # little detail to skip
    assert progressive_resize(_config(epochs=2), model, 3, "cpu") == 0.0  # too few epochs to grow
    assert progressive_resize(_config(epochs=5, progressive_resize=0), model, 3, "cpu") == 0.0  # off by hand


def test_a_model_of_one_input_size_is_left_alone_or_refused():
    vit = create_model("vit_tiny_patch16_224", num_classes=3, in_chans=3, img_size=224)
    config = build_config(overrides={"data": {"img_size": 224}, "model": {"name": "vit_tiny_patch16_224"}})
    assert progressive_resize(config, vit, 3, "cpu") == 0.0  # auto: a ViT's patch grid is fixed
    by_hand = build_config(
        overrides={
            "data": {"img_size": 224},
            "model": {"name": "vit_tiny_patch16_224"},
            "train": {"progressive_resize": 0.5},
        }
    )
    with pytest.raises(
        ConfigError, match=r"train\.progressive_resize: model vit_tiny_patch16_224 does not take 112-px"
    ):
        progressive_resize(by_hand, vit, 3, "cpu")


def test_training_sees_small_images_first_and_full_ones_last(monkeypatch, class_folders, tmp_path):
    from imgcls.training import steps

    sides = []
    real = steps.forward_backward

    def spy(setup, opt, x, target, *, sync):
        sides.append(x.shape[-1])
        return real(setup, opt, x, target, sync=sync)

    monkeypatch.setattr(steps, "forward_backward", spy)
    args = ["-q", "train", str(class_folders), "--model", "small-net", "--img-size", "64", "--epochs", "3"]
    assert (
        main([*args, "--batch-size", "12", "--set", "train.progressive_resize=0.5", "--out", str(tmp_path / "r")]) == 0
    )
    per_epoch = len(sides) // 3
    assert sides[0] == 32 and sides[-1] == 64 and sides[per_epoch] == 48
    assert (tmp_path / "r" / "best.safetensors").is_file()


def test_out_of_range_fraction_names_its_key():
    with pytest.raises(ConfigError, match=r"train\.progressive_resize"):
        build_config(overrides={"train": {"progressive_resize": 1.0}})
