"""torchvision's light families that timm does not have (GoogLeNet, ShuffleNet v2, SqueezeNet),
behind timm's model interface, as `torchvision:NAME`.

torchvision's classification models have no common feature/head split (each writes its own
forward), so each family here names its body layers, and this adapter runs them, pools, and
applies one linear classifier: forward_features, forward_head(pre_logits=...), get_classifier,
reset_classifier and num_features, as the trainer, predictor, exporter and embeddings expect.
The body keeps torchvision's layer names, so a torchvision state dict saved with
`model.state_dict()` loads through `--pretrained FILE` by name (the classifier only when its
class count fits). torchvision has no ShuffleNet v1: `torchvision:shufflenet_v2_x1_0` is v2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.errors import ConfigError

PREFIX = "torchvision:"


@dataclass(frozen=True)
class Family:
    body: tuple[str, ...]  # torchvision's child modules before pooling, in forward order
    drop_rate: float  # dropout before the classifier, as torchvision's own head has it
    description: str


GOOGLENET = Family(
    (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    ),
    0.2,
    "GoogLeNet / Inception v1 (torchvision; no auxiliary heads)",
)  # fmt: skip
SHUFFLENET_V2 = Family(
    ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), 0.0, "ShuffleNet v2 (torchvision, which has no v1)"
)
# SqueezeNet's own head is dropout, a 1x1 convolution to the classes, ReLU and average pooling;
# the ReLU clips logits at zero and the convolution is no linear head to fit or reset, so here
# the pooled 512 features go to a linear classifier, as timm's heads do.
SQUEEZENET = Family(("features",), 0.5, "SqueezeNet (torchvision; linear head on pooled features)")

FAMILIES: dict[str, Family] = {
    "googlenet": GOOGLENET,
    **{f"shufflenet_v2_{w}": SHUFFLENET_V2 for w in ("x0_5", "x1_0", "x1_5", "x2_0")},
    "squeezenet1_0": SQUEEZENET,
    "squeezenet1_1": SQUEEZENET,
}


class TorchvisionNet(nn.Module):
    """A torchvision network's body (its own modules, its own names) + pooling + linear head."""

    def __init__(self, source: nn.Module, family: Family, num_classes: int):
        super().__init__()
        children = dict(source.named_children())
        self.body_names = family.body
        for name in family.body:
            self.add_module(name, children[name])
        head = getattr(source, "fc", None) or source.classifier[1]  # SqueezeNet: its 1x1 convolution
        width = head.in_features if isinstance(head, nn.Linear) else head.in_channels
        self.num_features = self.head_hidden_size = width
        self.num_classes = num_classes
        self.drop_rate = family.drop_rate
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.body_names:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = nn.functional.dropout(self.global_pool(x), self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)


def replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """A first convolution taking `in_chans` channels (1 for grey images), otherwise alike;
    weights start fresh, as the rest of the network's do."""
    parent_name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    *path, last = parent_name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, last, new)


def builder(name: str) -> Callable[..., nn.Module]:
    """The build function of `torchvision:NAME`, for the model registry."""
    if name not in FAMILIES:
        raise ConfigError(
            f"torchvision:{name} is not offered; torchvision models here: "
            f"{', '.join(PREFIX + n for n in FAMILIES)} (torchvision has no ShuffleNet v1). "
            "Other families (ResNet, MobileNet, EfficientNet, ...) are timm models: `imgcls models PATTERN`."
        )

    def build(num_classes: int, in_chans: int = 3, img_size: int = 224, **kwargs) -> nn.Module:
        import torchvision

        del img_size  # every family here pools globally: any size from its minimum on
        if name == "googlenet":
            kwargs = {"aux_logits": False, "init_weights": True, **kwargs}
        # Built with its own 1000-class head (unused): torchvision's constructors refuse no
        # num_classes, and the classifier is imgcls's linear head anyway.
        source = torchvision.models.get_model(name, weights=None, **kwargs)
        replace_first_conv(source, in_chans)
        return TorchvisionNet(source, FAMILIES[name], num_classes)

    return build
