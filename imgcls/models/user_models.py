"""Your own nn.Module as an imgcls model: `--model mypkg.module:MyNet` on the command line, or
`imgcls.register_model(name, MyNet)` in Python.

The class (or a function returning a module) is called with those of `num_classes`,
`in_chans` and `img_size` its signature takes, plus the config's model.kwargs. A module with
timm's interface (forward_features, forward_head, get_classifier, reset_classifier,
num_features) is used as it is; any other is wrapped in UserNet, which takes its last
nn.Linear as the classifier and that layer's input as the embedding.

Importing a module runs its code. imgcls imports one only when the user named it: `--model
MODULE:NAME` on `imgcls train`, a module listed in $IMGCLS_TRUSTED_MODULES (comma-separated),
or a name given to `register_model`. A checkpoint, which may come from anywhere, names its
model in its metadata, and that alone never imports anything: predict, evaluate, export,
serve and the retrieval commands need $IMGCLS_TRUSTED_MODULES=mypkg.module (or, in Python,
`register_model("mypkg.module:MyNet", MyNet)` first).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable

import torch
from torch import nn

from imgcls.errors import ConfigError, ModelNotFoundError

TRUSTED_ENV = "IMGCLS_TRUSTED_MODULES"
RESERVED_PREFIXES = ("timm", "clip", "torchvision")
_NAME = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$")
BUILD_ARGUMENTS = ("num_classes", "in_chans", "img_size")
TIMM_METHODS = ("forward_features", "forward_head", "get_classifier", "reset_classifier")

_trusted: set[str] = set()  # modules named by the user in this process (train --model)


def is_user_model_name(name: str) -> bool:
    match = _NAME.match(name)
    return bool(match) and match["module"] not in RESERVED_PREFIXES


def trust_module(name: str) -> None:
    """The user named this model on the command line: its module may be imported."""
    if is_user_model_name(name):
        _trusted.add(name.split(":")[0])


def _trusted_modules() -> set[str]:
    listed = {m.strip() for m in os.environ.get(TRUSTED_ENV, "").split(",") if m.strip()}
    return _trusted | listed


def import_factory(name: str) -> Callable[..., nn.Module]:
    """MODULE:NAME's class or function, when the user trusts MODULE; else a one-line refusal."""
    module_name, attr = name.split(":")
    if module_name not in _trusted_modules():
        raise ModelNotFoundError(
            f"model {name!r} is code in module {module_name!r}, which imgcls imports only when you name it: "
            f"train --model {name}, or set {TRUSTED_ENV}={module_name} (a checkpoint's metadata alone never "
            "imports code)."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise ConfigError(f"model {name!r}: importing {module_name} failed: {err}.") from None
        sys.path.append(os.getcwd())  # `imgcls` as an installed script does not look in the current folder
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            raise ConfigError(
                f"model {name!r}: no module {module_name} in the current folder or on PYTHONPATH."
            ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: module {module_name} has no class or function {attr!r}.")
    return factory


def has_timm_interface(model: nn.Module) -> bool:
    return all(callable(getattr(model, m, None)) for m in TIMM_METHODS) and hasattr(model, "num_features")


def user_builder(factory: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
    """A registry build function around the user's class or function."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable shows no signature: pass nothing
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def build(num_classes: int, in_chans: int = 3, img_size: int = 224, **kwargs) -> nn.Module:
        given = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
        passed = {k: v for k, v in given.items() if takes_any or k in parameters}
        model = factory(**passed, **kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module.")
        model = model if has_timm_interface(model) else UserNet(model, name)
        outputs = getattr(model.get_classifier(), "out_features", num_classes)
        if outputs != num_classes:
            raise ConfigError(
                f"model {name!r} gives {outputs} outputs for {num_classes} classes: let it take num_classes."
            )
        return model

    return build


class UserNet(nn.Module):
    """A plain nn.Module with timm's interface: its last nn.Linear is the classifier, the input
    of that layer the embedding (forward_head(pre_logits=True) runs the network and keeps it).
    forward_features is the identity: which layers make "features" only the network knows."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(
                f"model {name!r} has no nn.Linear to serve as its classifier: end it with one, or give it "
                f"timm's methods ({', '.join(TIMM_METHODS)}, num_features)."
            )
        self.net = net
        self.classifier_name = linears[-1]
        head = self.get_classifier()
        self.num_features = self.head_hidden_size = head.in_features
        self.num_classes = head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            return self.net(x)
        seen: list[torch.Tensor] = []
        hook = self.get_classifier().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.net(x)
        finally:
            hook.remove()
        return seen[-1].flatten(1)

    def get_classifier(self) -> nn.Linear:
        return self.net.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        *path, last = self.classifier_name.split(".")
        parent = self.net.get_submodule(".".join(path)) if path else self.net
        setattr(parent, last, nn.Linear(self.num_features, num_classes))
        self.num_classes = num_classes
