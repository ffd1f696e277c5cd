"""One registry of model names: imgcls's own seed models, then every model timm knows,
torchvision's light families (`torchvision:NAME`), CLIP towers (`clip:ARCH`) and the user's
own modules (`mypkg.module:MyNet`, or `register_model`).

A duplicate registration is an error (as in torchvision's registry); an unknown name is
answered with the closest names. Models from every source share timm's interface. timm and
torchvision models get their smallest input side by trying (models/input_size.py), so a too
small --img-size is refused in one line before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.errors import ConfigError, ModelNotFoundError
from imgcls.models import seed, torchvision_nets, user_models
from imgcls.models.input_size import smallest_side

TIMM_PREFIX = "timm:"
CLIP_PREFIX = "clip:"  # clip:ARCH, an open_clip image tower + linear head (models/clip_backbone.py)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # (num_classes, in_chans, img_size, **kwargs) -> model
    description: str
    min_size: int = 8  # smallest input side the architecture accepts
    config_defaults: dict | None = None  # recipe values this model needs (recipes and flags still win)
    timm_name: str | None = None  # the timm architecture it builds, whose pretrained weights it can take
    derive_min_size: bool = False  # min_size is found by trying (resolve), not declared


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    build: Callable[..., nn.Module],
    description: str,
    min_size: int = 8,
    config_defaults: dict | None = None,
    timm_name: str | None = None,
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, build, description, min_size, config_defaults, timm_name)


def register_model(
    name: str, build: Callable[..., nn.Module], *, description: str = "your own model", min_size: int = 8
) -> None:
    """Make your own nn.Module class (or a function returning one) trainable and loadable by name.

    `build` is called with those of num_classes, in_chans and img_size it takes, plus the
    config's model.kwargs; a module without timm's interface gets its last nn.Linear taken as
    the classifier (models/user_models.py). Registering "mypkg.module:MyNet" lets checkpoints
    trained with `--model mypkg.module:MyNet` load in this process."""
    register(name, user_models.user_builder(build, name), description, min_size)


def config_defaults(name: str) -> dict:
    """Config values a model wants by default: {section: {key: value}}."""
    entry = _REGISTRY.get(name)
    return dict(entry.config_defaults or {}) if entry else {}


# A linear model on raw pixels has no translation invariance: shifted and mirrored
# copies only blur its templates (Fashion-MNIST, 3 epochs: 0.68 with them, 0.84 without).
NO_AUGMENTATION = {"augment": {"hflip": False, "translate": 0.0}}
# AlexNet and VGG as their papers trained them: SGD, momentum 0.9, rate 0.01, weight decay 5e-4.
# Their 4096-wide dense layers make AdamW at the default 2e-3 diverge or stall: VGG-11 started
# at loss 9.6 (validation 33.5) on 10 classes and AlexNet stayed at chance after 50 steps
# (benchmarks/defaults.py measures both settings).
PAPER_SGD = {"optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}}


def _timm_builder(timm_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
        return _create_timm(timm_name, num_classes, in_chans, img_size, **kwargs)

    return build


register("softmax", seed.softmax_regression, "softmax regression: flatten + linear", config_defaults=NO_AUGMENTATION)
register("lenet", seed.lenet, "LeNet-5 with ReLU and max pooling", min_size=12)
register("keras-cnn", seed.keras_cnn, "two conv 32 + max-pool blocks, dense 128", min_size=10)
register("small-net", seed.small_net, "airbench-style conv/pool net for 28-64 px (width 64)", min_size=8)
register(
    "alexnet",
    seed.alexnet,
    "AlexNet, five convolutions and two 4096 dense layers",
    min_size=65,
    config_defaults=PAPER_SGD,
)


def _classic(name: str) -> Callable[..., nn.Module]:
    def build(**_) -> nn.Module:
        raise ConfigError(f"{name} is a scikit-learn pipeline, not a torch module; it is fitted by `imgcls train`.")

    return build


CLASSIC_MODELS = ("hog-svm", "color-hist-logreg")
register("hog-svm", _classic("hog-svm"), "classic: HOG features + linear SVM (scikit-image, scikit-learn)")
register("color-hist-logreg", _classic("color-hist-logreg"), "classic: colour histograms + logistic regression")


def is_classic(name: str) -> bool:
    return name in CLASSIC_MODELS


register("resnet18", _timm_builder("resnet18"), "ResNet-18 (timm)", min_size=16, timm_name="resnet18")
for _depth in (11, 16):
    register(
        f"vgg{_depth}",
        _timm_builder(f"vgg{_depth}_bn"),
        f"VGG-{_depth} with batch norm (timm)",
        min_size=32,
        timm_name=f"vgg{_depth}_bn",
        config_defaults=PAPER_SGD,
    )


def _clip_builder(clip_model: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from imgcls.models.clip_backbone import build_clip_backbone  # open_clip loads in seconds: only when asked

        return build_clip_backbone(clip_model, **kwargs)

    return build


@functools.cache
def timm_model_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _create_timm(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs
        )
    except TypeError:
        # Only fixed-size architectures (ViT, Swin, ...) take img_size; convnets refuse it.
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _lookup(name: str) -> ModelEntry:
    """The entry for a name, its min_size not yet derived (listing and building need none)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(CLIP_PREFIX):
        return ModelEntry(name, _clip_builder(name.removeprefix(CLIP_PREFIX)), "CLIP image tower + linear head", 16)
    if name.startswith(torchvision_nets.PREFIX):
        arch = name.removeprefix(torchvision_nets.PREFIX)
        build = torchvision_nets.builder(arch)
        return ModelEntry(name, build, torchvision_nets.FAMILIES[arch].description, derive_min_size=True)
    if user_models.is_user_model_name(name):
        build = user_models.user_builder(user_models.import_factory(name), name)
        return ModelEntry(name, build, "your own module", min_size=1)
    timm_name = name.removeprefix(TIMM_PREFIX)
    if timm_name in timm_model_names():
        build = _timm_builder(timm_name)
        return ModelEntry(name, build, f"timm model {timm_name}", timm_name=timm_name, derive_min_size=True)
    choices = list(dict.fromkeys([*_REGISTRY, *torchvision_names(), *timm_model_names()]))  # resnet18 is in two
    close = difflib.get_close_matches(timm_name, choices, n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ModelNotFoundError(f"unknown model {name!r}.{hint} `imgcls models` lists them all.")


def torchvision_names() -> list[str]:
    return [torchvision_nets.PREFIX + name for name in torchvision_nets.FAMILIES]


@functools.cache
def _derived_min_size(name: str) -> int | None:
    entry = _lookup(name)
    fixed = True  # timm's models that take img_size (ViT, Swin, ...) are built for each side tried
    if entry.timm_name:
        import timm

        cfg = timm.get_pretrained_cfg(entry.timm_name)
        fixed = bool(cfg.fixed_input_size) if cfg is not None else True
    elif name.startswith(torchvision_nets.PREFIX):
        fixed = False

    def build(side: int) -> nn.Module:
        return entry.build(num_classes=2, in_chans=3, img_size=side)

    return smallest_side(build, size_dependent=fixed)


def resolve(name: str) -> ModelEntry:
    """The registry entry for a name: imgcls's own, else torchvision's, a CLIP tower, the
    user's module, or timm's (optionally 'timm:NAME'), with the smallest input side it takes."""
    entry = _lookup(name)
    if entry.derive_min_size:
        derived = _derived_min_size(name)
        return dataclasses.replace(entry, min_size=derived or entry.min_size, derive_min_size=False)
    return entry


def timm_architecture(name: str) -> str | None:
    """The timm architecture a model name builds (resnet18 -> resnet18, vgg11 -> vgg11_bn), or None."""
    try:
        return _lookup(name).timm_name
    except ModelNotFoundError:
        return None


def create_model(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 224, **kwargs) -> nn.Module:
    """A freshly initialised model with timm's interface. A timm or torchvision model's derived
    minimum side is checked by `resolve` (imgcls train does it before decoding), not here:
    loading a checkpoint does not spend meta forwards on finding it again."""
    entry = _lookup(name)
    if img_size < entry.min_size:
        raise ConfigError(f"model {name!r} needs images of at least {entry.min_size} px; got --img-size {img_size}.")
    try:
        return entry.build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    except TypeError as err:
        # Python names the refused keyword ("unexpected keyword argument 'width'"); any other
        # TypeError is a fault inside the builder and keeps its traceback.
        if not any(f"argument '{key}'" in str(err) for key in kwargs):
            raise
        raise ConfigError(f"model {name!r} does not accept these arguments: {err}") from None


def count_parameters(name: str, *, num_classes: int = 10, in_chans: int = 3, img_size: int = 224) -> int | None:
    """Parameter count, computed on the meta device so no memory is allocated."""
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    except Exception:  # noqa: BLE001 - a listing must not fail because one exotic model cannot be built
        return None
    return sum(p.numel() for p in model.parameters())


def list_models(pattern: str | None = None, *, include_timm: bool = True) -> list[tuple[str, str]]:
    """(name, description) of imgcls's models, then timm's, filtered by a glob or substring."""
    rows = [(e.name, e.description) for e in _REGISTRY.values()]
    rows += [(n, _lookup(n).description) for n in torchvision_names()]
    if include_timm:
        rows += [(n, "timm") for n in timm_model_names() if n not in _REGISTRY]
    if not pattern:
        return rows
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [row for row in rows if fnmatch.fnmatch(row[0], glob)]
