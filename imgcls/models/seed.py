"""The classic architectures, written plainly, behind timm's model interface.

Every model here exposes what timm models do (forward_features, forward_head with
pre_logits, get_classifier, reset_classifier, num_features), so training, prediction,
export and embeddings never special-case an architecture.
"""

from __future__ import annotations

from torch import nn

from imgcls.errors import ConfigError


class SeedNet(nn.Module):
    """features -> pre_logits (the embedding) -> fc (the classifier)."""

    def __init__(self, features: nn.Module, pre_logits: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.features = features
        self.pre_logits = pre_logits
        # timm's names: the width of forward_head(pre_logits=True), i.e. the embedding.
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.fc = nn.Linear(num_features, num_classes)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)


def softmax_regression(num_classes: int, in_chans: int, img_size: int) -> SeedNet:
    """Flatten + one linear layer: multinomial logistic regression on raw pixels (d2l ch. 4)."""
    return SeedNet(nn.Identity(), nn.Flatten(), in_chans * img_size * img_size, num_classes)


def lenet(num_classes: int, in_chans: int, img_size: int) -> SeedNet:
    """LeNet-5 (LeCun et al. 1998) as in d2l, with ReLU and max pooling, which train
    in a few epochs where the original sigmoid and average pooling need dozens."""
    features = nn.Sequential(
        nn.Conv2d(in_chans, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    side = (img_size // 2 - 4) // 2
    pre_logits = nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return SeedNet(features, pre_logits, 84, num_classes)


def keras_cnn(num_classes: int, in_chans: int, img_size: int) -> SeedNet:
    """The small-data article's network: (Conv 32 3x3 + ReLU + MaxPool 2) twice, Dense 128, Dense N."""
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    side = ((img_size - 2) // 2 - 2) // 2
    pre_logits = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, 128), nn.ReLU())
    return SeedNet(features, pre_logits, 128, num_classes)


def alexnet(num_classes: int, in_chans: int, img_size: int) -> SeedNet:
    """AlexNet (Krizhevsky et al. 2012) as in d2l: five convolutions, two 4096 dense layers."""
    features = nn.Sequential(
        nn.Conv2d(in_chans, 96, 11, stride=4, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(5),
    )
    pre_logits = nn.Sequential(
        nn.Flatten(),
        nn.Linear(256 * 5 * 5, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
    )
    return SeedNet(features, pre_logits, 4096, num_classes)


def kaiming_init(model: nn.Module) -> None:
    """He et al. 2015 initialisation for ReLU networks trained from scratch: normal weights
    with fan-out scaling for convolutions and fan-in for linear layers, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _conv_bn(in_chans: int, out_chans: int, act: str) -> list[nn.Module]:
    conv = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(out_chans), ACTIVATIONS[act]()]


def _pooled_block(in_chans: int, out_chans: int, act: str) -> nn.Sequential:
    """conv -> max-pool 2 -> BN -> act -> conv -> BN -> act: airbench's block, which pools
    right after the first convolution so the second one runs at a quarter of the pixels."""
    first = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
    pooled = [first, nn.MaxPool2d(2), nn.BatchNorm2d(out_chans), ACTIVATIONS[act]()]
    return nn.Sequential(*pooled, *_conv_bn(out_chans, out_chans, act))


def small_net(num_classes: int, in_chans: int, img_size: int, width: int = 64, act: str = "gelu") -> SeedNet:
    """A small all-convolutional net for 28-64 px images, shaped after Keller Jordan's airbench
    (the fastest known CIFAR-10 trainer): a stem convolution, three pooled blocks of widths
    w, 2w, 4w, global max pooling, a linear classifier. At 28 px, width 64 has 1.17 M
    parameters and 63 M multiply-adds per image; width 48 (the fashion-mnist recipe) 0.66 M
    and 36 M, and trains 1.5x as fast on a 2-core CPU. act "gelu" is airbench's choice;
    "relu" made a bfloat16 training step 1.36x faster on that CPU."""
    if act not in ACTIVATIONS:
        raise ConfigError(f"small-net: act must be one of {', '.join(ACTIVATIONS)}, not {act!r}.")
    features = nn.Sequential(
        *_conv_bn(in_chans, width // 2, act),
        _pooled_block(width // 2, width, act),
        _pooled_block(width, 2 * width, act),
        _pooled_block(2 * width, 4 * width, act),
    )
    pre_logits = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
    return SeedNet(features, pre_logits, 4 * width, num_classes)
