"""Run configuration: frozen dataclasses per concern, read from a recipe plus overrides.

A config is validated once, at the edge (recipe file, command-line flags), and then
frozen; each function receives only the section it needs. Unknown keys fail with a
"did you mean" suggestion, because a misspelt option that is silently ignored costs
users a whole training run.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from imgcls.config_values import coerce, merge, parse_overrides, suggest  # noqa: F401 - parse_overrides: the CLI's
from imgcls.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # folder of class folders, or a root with train/ val/ (test/)
    val: str | None = None  # explicit validation folder; no automatic split then
    img_size: int = 32  # images are decoded once and resized to img_size x img_size
    channels: Literal["auto", "1", "3"] = "auto"  # auto: 1 when every image is grey
    resize: Literal["crop", "squash", "pad"] = "crop"  # how non-square images fit
    # With pretrained weights these three default to what the weights were trained with
    # (timm's pretrained config), as timm's resolve_data_config does; set them to override.
    crop_pct: float = 1.0  # crop: the centre square keeps this share of the shorter side
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, ...] = ()  # per channel, 0..1 scale; empty: the weights' own, else the training images'
    std: tuple[float, ...] = ()
    val_fraction: float = 0.2  # share of each class held out when no val set exists
    max_pixels: int = 64_000_000  # larger images are refused (decompression bombs)
    max_file_mb: float = 256  # larger image files are refused before they are read (memory bound)
    decode_workers: int = 0  # processes decoding images; 0 = one per CPU core
    # single-label (one class per image) or multi-label (any number, from a manifest); auto:
    # multi-label when a manifest has a row with no label or several.
    task: Literal["auto", "single-label", "multi-label"] = "auto"
    # let a manifest name files outside its own folder, and a folder's links lead outside it
    allow_outside: bool = False
    # Tar shards: stream them through a shuffle buffer (always), decode them into the cache
    # (never), or stream when the decoded training images would not fit in memory (auto).
    stream: Literal["auto", "always", "never"] = "auto"
    stream_buffer: int = 2048  # images each stream reader shuffles among


@dataclass(frozen=True)
class AugmentConfig:
    # Fast batch-level tensor ops, drawn per image (imgcls.data.augment.augment_batch):
    hflip: bool = True  # random horizontal flip
    vflip: bool = False  # random vertical flip
    translate: float = 0.0625  # random shift up to this fraction of the size
    fill: Literal["reflect", "constant"] = "reflect"  # what shifted-in pixels show (constant: black)
    cutout: float = 0.0  # side of a zeroed square at a random centre, as a fraction of the size; 0 = off
    # Per-image torchvision.transforms.v2 ops (each 0 / "none" = off; slower, a loop over images):
    rotation: float = 0.0  # degrees, +-
    shear: float = 0.0  # degrees, +-
    zoom: float = 0.0  # scale drawn in [1 - zoom, 1 + zoom]
    brightness: float = 0.0  # ColorJitter strengths
    contrast: float = 0.0
    saturation: float = 0.0
    random_resized_crop: float = 0.0  # smallest kept area fraction (e.g. 0.35); 0 = off
    auto_augment: Literal["none", "randaugment", "trivialaugment", "autoaugment"] = "none"
    random_erasing: float = 0.0  # probability of erasing a random rectangle (torchvision's, per image)
    # Test-time augmentation, stored with the model: predict from the mean logits of the
    # image and its mirror image (twice the inference cost; for classes a mirror keeps).
    test_flip: bool = False
    # Batch-level label mixing (soft targets):
    mixup: float = 0.0  # Beta(alpha, alpha) of Mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 = off
    ricap: float = 0.0  # Beta(beta, beta) of RICAP; 0 = off
    mix_prob: float = 1.0  # share of batches that are mixed when any mixing is on


@dataclass(frozen=True)
class ModelConfig:
    name: str = "keras-cnn"
    kwargs: dict = field(default_factory=dict)  # extra arguments of the model builder
    embedding_dim: int = 128  # margin losses (train.loss): width of the embedding, a linear + batch-norm neck
    subcenters: int = 3  # train.loss subcenter-arcface: class weights per class (Deng et al. 2020)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd", "adam", "rmsprop", "adabound"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01  # not applied to norms and biases
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = True  # sgd only
    final_lr: float = 0.1  # adabound: the SGD rate its bounds converge to
    adabound_gamma: float = 1e-3  # adabound: convergence speed of the bounds
    scale_lr: bool = False  # linear scaling rule: lr * batch_size / 256 (Goyal et al. 2017)
    schedule: Literal["cosine", "constant", "step", "onecycle", "plateau"] = "cosine"
    warmup_epochs: float = 0.5  # linear warm-up from lr/100, then the schedule
    step_epochs: int = 30  # step: multiply by step_gamma every step_epochs
    step_gamma: float = 0.1
    plateau_patience: int = 2  # plateau: epochs without val-loss progress before a cut
    plateau_factor: float = 0.1
    clip_grad_norm: float = 0.0  # 0 = no clipping


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    # Evaluation batches: on a 2-core CPU with 1 MB of L2 per core, 256 evaluated 10,000
    # images 2-3.5x faster than 1,024 (keras-cnn and small-net at 28 px). On a CPU a batch also
    # holds at most 16 images of 224 px (imgcls.inference.batched.CPU_BATCH_PIXELS).
    eval_batch_size: int = 256
    seed: int = 0
    label_smoothing: float = 0.0
    # arcface, cosface, subcenter-arcface: metric learning, an embedding model (imgcls.models.embedding)
    # for gallery / recognize / search, its cosine classifier trained with that margin ([metric] extra);
    # supcon: supervised contrastive loss between two augmented views (its classifier: cross-entropy).
    loss: Literal["cross-entropy", "arcface", "cosface", "subcenter-arcface", "supcon"] = "cross-entropy"
    margin: float | None = None  # arcface: radians added to the angle (0.5); cosface: off the cosine (0.35)
    scale: float = 30.0  # metric-learning losses: logits = scale x cosine
    # metric-learning losses: weight of SimCLR's NT-Xent between two augmented views of each image,
    # which keeps what tells images of one class apart (and so classes never trained on)
    instance_contrast: float = 0.0
    temperature: float = 0.1  # supcon and instance_contrast: their softmax's temperature
    whiten_embedding: bool = True  # fit the embedding's whitening at the end (imgcls.models.whitening)
    class_weights: Literal["none", "balanced"] = "none"  # balanced: weight ~ 1 / class frequency
    balanced_sampling: bool = False  # draw batches so every class is seen equally often
    multilabel_loss: Literal["bce", "asl"] = "bce"  # multi-label: binary cross-entropy or Asymmetric Loss
    sync_bn: bool = False  # several processes on CUDA: batch-norm statistics over the global batch
    accumulate: int = 1  # gradient accumulation: optimizer step every N batches
    ema: bool = False  # keep an exponential moving average of the weights; evaluated and saved
    ema_decay: float = 0.999
    early_stopping: int = 0  # stop after N epochs without val accuracy progress; 0 = off
    # Also save last.safetensors inside an epoch this often, so a kill loses at most this much
    # training (--resume continues from that step exactly); 0 = at epoch ends only.
    checkpoint_minutes: float = 10.0
    init: Literal["kaiming", "default"] = "kaiming"  # for models trained from scratch
    device: str = "auto"  # auto (CUDA when there is a GPU, else CPU), cpu, cuda, cuda:N
    # auto: bf16 where the CPU or GPU has it, else float32 on CPU and float16 (loss-scaled) on CUDA
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # 3-4x faster convolutions on CPU (see PERFORMANCE notes)
    threads: int = 0  # torch threads; 0 = physical cores
    # A live view: TensorBoard event files in RUN_DIR/tensorboard (the [track] extra); none = off
    log: Literal["none", "tensorboard"] = "none"
    # Seconds for the whole run (--time 10m): the epochs are planned from a measured step to fit
    # it, train.epochs at most; 0 = no budget
    time_budget: float = 0.0
    # Progressive resizing: epoch 1 trains at this fraction of data.img_size, growing to the full
    # size by the last epoch; 0 = off; none = auto: 0.5 from random weights at 128 px or more
    progressive_resize: float | None = None


@dataclass(frozen=True)
class TransferConfig:
    # A timm pretrained tag (resnet18.a1_in1k; imagenet = the model's default), fetched into
    # the Hugging Face cache; or a .safetensors / .pth state dict, or an imgcls checkpoint.
    pretrained: str | None = None
    pretrained_source: str | None = None  # recorded when the run starts: where the weights came from
    pretrained_sha256: str | None = None  # recorded when the run starts; a later run refuses other bytes
    freeze_backbone: bool = False  # train the classifier only (linear probe)
    unfreeze_after: int = 0  # with freeze_backbone: train everything from this epoch on; 0 = never
    head_lr_scale: float = 1.0  # the classifier's rate = lr * head_lr_scale
    # Before epoch 1, fit the classifier by logistic regression on the frozen network's pooled
    # features (scikit-learn), so fine-tuning starts from a good head and does not wreck the
    # backbone with the gradients of a random one (LP-FT, Kumar et al. 2022). Saved as epoch 0.
    linear_probe: bool = False
    probe_c: float = 1.0  # inverse L2 strength of that logistic regression (scikit-learn's C)
    # Batch norm keeps its pretrained statistics (eval mode) while the weights train: batches
    # of a few dozen images estimate them worse than ImageNet did. A frozen backbone always does.
    freeze_bn: bool = False


@dataclass(frozen=True)
class DistillConfig:
    teacher: str | None = None  # an imgcls checkpoint with the same classes
    alpha: float = 0.5  # weight of the teacher's soft targets; 1 - alpha on the true labels
    temperature: float = 4.0  # softens both distributions (Hinton et al. 2015)


@dataclass(frozen=True)
class SemiConfig:
    """Semi-supervised training (imgcls.training.semi): labelled DATA plus a folder of unlabeled images."""

    unlabeled: str | None = None  # folder of images without labels, searched recursively; None = supervised
    method: Literal["fixmatch", "pseudo"] = "fixmatch"  # pseudo: plain pseudo-labelling (Lee 2013)
    threshold: float = 0.95  # confidence a prediction needs to become a pseudo-label (FixMatch's tau)
    mu: int = 7  # unlabeled images per labelled image in a step (FixMatch's mu)
    weight: float = 1.0  # weight of the unlabeled loss (FixMatch's lambda_u)
    max_unlabeled: int = 0  # use a seeded random subset of this many unlabeled images; 0 = all


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    recipe: str = "default"  # the recipe the run started from (a name or a YAML file), for the report


_SECTION_TYPES = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "recipe"}


def _recipe_name(recipe: str | Path | None) -> str:
    """A bundled recipe by its name (given by name or by path), any other file as given."""
    if recipe is None:
        return "default"
    path = Path(recipe)
    return path.stem if path.suffix == ".yaml" and path.parent.resolve() == RECIPES_DIR.resolve() else str(recipe)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _section_from_dict(name: str, values: dict[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}'.{suggest(key, known)}")
        out[key] = coerce(f"{name}.{key}", value, hints[key])
    return cls(**out)


def read_recipe(recipe: str | Path | None) -> dict:
    """A recipe by name (imgcls/recipes/NAME.yaml) or by YAML file path, as nested dicts."""
    if recipe is None:
        recipe = "default"
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown recipe '{recipe}'. Known recipes: {', '.join(list_recipes())}, "
                f"or give a YAML file.{suggest(str(recipe), list_recipes())}"
            )
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (data, model, ...).")
    return loaded


def build_config(
    recipe: str | Path | None = None,
    overrides: dict | None = None,
    model_defaults: Callable[[str], dict] | None = None,
    weights_defaults: Callable[[str, str], dict] | None = None,
) -> Config:
    """The validated, frozen config of a run. Later layers win: imgcls's defaults, the
    chosen model's own defaults (`model_defaults(name)`), what the starting weights were
    trained with (`weights_defaults(pretrained, name)`: input size, crop, mean/std), the
    recipe, then overrides."""
    recipe_values = merge({}, read_recipe(recipe), f"recipe {recipe or 'default'}", list(_SECTION_TYPES))
    overrides = merge({}, overrides or {}, "override", list(_SECTION_TYPES))
    values: dict = {}
    name = overrides.get("model", {}).get("name") or recipe_values.get("model", {}).get("name") or ModelConfig.name
    if model_defaults is not None:
        values = merge(values, model_defaults(str(name)), f"defaults of model {name}", list(_SECTION_TYPES))
    pretrained = overrides.get("transfer", {}).get("pretrained") or recipe_values.get("transfer", {}).get("pretrained")
    if weights_defaults is not None and pretrained:
        where = f"pretrained weights {pretrained}"
        values = merge(values, weights_defaults(str(pretrained), str(name)), where, list(_SECTION_TYPES))
    values = merge(values, recipe_values, f"recipe {recipe or 'default'}", list(_SECTION_TYPES))
    values = merge(values, overrides, "override", list(_SECTION_TYPES))
    sections = {name: _section_from_dict(name, values.get(name, {})) for name in _SECTION_TYPES}
    config = Config(**sections, recipe=_recipe_name(recipe))
    validate(config)
    return config


def validate(config: Config) -> None:
    checks = [
        (8 <= config.data.img_size <= 4096, "data.img_size must be between 8 and 4096 pixels"),
        (0.0 < config.data.val_fraction < 1.0, "data.val_fraction must be between 0 and 1"),
        (config.data.max_pixels > 0, "data.max_pixels must be positive"),
        (config.data.max_file_mb > 0, "data.max_file_mb must be positive"),
        (config.data.stream_buffer >= 1, "data.stream_buffer must be at least 1"),
        (0.0 <= config.augment.translate < 0.5, "augment.translate must be in [0, 0.5)"),
        (0.0 <= config.augment.cutout <= 1.0, "augment.cutout must be in [0, 1]"),
        (config.train.epochs >= 1, "train.epochs must be at least 1"),
        (0 <= config.train.seed < 2**32, "train.seed must be in [0, 2**32)"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.eval_batch_size >= 1, "train.eval_batch_size must be at least 1"),
        (0.0 <= config.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (config.optim.lr > 0, "optim.lr must be positive"),
        (0 <= config.optim.momentum < 1, "optim.momentum must be in [0, 1)"),
        (config.optim.step_epochs >= 1, "optim.step_epochs must be at least 1"),
        (0 < config.optim.step_gamma <= 1, "optim.step_gamma must be in (0, 1]"),
        (0 < config.optim.plateau_factor < 1, "optim.plateau_factor must be in (0, 1)"),
        (config.optim.plateau_patience >= 0, "optim.plateau_patience must not be negative"),
        (config.optim.clip_grad_norm >= 0, "optim.clip_grad_norm must not be negative"),
        (min(config.optim.final_lr, config.optim.adabound_gamma) > 0, "optim.final_lr, adabound_gamma must be > 0"),
        (min(config.train.threads, config.data.decode_workers) >= 0, "train.threads, data.decode_workers must be >= 0"),
        (config.train.accumulate >= 1, "train.accumulate must be at least 1"),
        (0 < config.train.ema_decay < 1, "train.ema_decay must be in (0, 1)"),
        (config.train.early_stopping >= 0, "train.early_stopping must not be negative"),
        (config.train.checkpoint_minutes >= 0, "train.checkpoint_minutes must not be negative"),
        (
            0 <= config.augment.rotation <= 180 and 0 <= config.augment.shear < 90,
            "augment.rotation must be in [0, 180] and shear in [0, 90)",
        ),
        (0 <= config.augment.zoom < 1, "augment.zoom must be in [0, 1)"),
        (
            min(config.augment.brightness, config.augment.contrast, config.augment.saturation) >= 0,
            "augment colour strengths must not be negative",
        ),
        (0 <= config.augment.random_resized_crop < 1, "augment.random_resized_crop must be in [0, 1)"),
        (
            0 <= config.augment.random_erasing <= 1 and 0 <= config.augment.mix_prob <= 1,
            "augment probabilities must be in [0, 1]",
        ),
        (
            min(config.augment.mixup, config.augment.cutmix, config.augment.ricap) >= 0,
            "augment mixing alphas must not be negative",
        ),
        (
            config.transfer.unfreeze_after >= 0 and config.transfer.head_lr_scale > 0,
            "transfer.unfreeze_after must not be negative and head_lr_scale must be positive",
        ),
        (
            0 <= config.distill.alpha <= 1 and config.distill.temperature > 0,
            "distill.alpha must be in [0, 1] and temperature positive",
        ),
        (config.optim.weight_decay >= 0, "optim.weight_decay must not be negative"),
        (0 < config.data.crop_pct <= 1, "data.crop_pct must be in (0, 1]"),
        (len(config.data.mean) == len(config.data.std), "data.std must have one value per value of data.mean"),
        (all(v > 0 for v in config.data.std), "data.std values must be positive"),
        (config.transfer.probe_c > 0, "transfer.probe_c must be positive"),
        (0 < config.semi.threshold <= 1 and config.semi.mu >= 1, "semi.threshold must be in (0, 1] and mu at least 1"),
        (config.semi.weight >= 0 and config.semi.max_unlabeled >= 0, "semi.weight and max_unlabeled must be >= 0"),
        (config.optim.warmup_epochs >= 0, "optim.warmup_epochs must not be negative"),
        (config.train.time_budget >= 0, "train.time_budget must not be negative"),
        (config.model.embedding_dim >= 2, "model.embedding_dim must be at least 2"),
        (config.model.subcenters >= 1, "model.subcenters must be at least 1"),
        (config.train.scale > 0, "train.scale must be positive"),
        (config.train.instance_contrast >= 0, "train.instance_contrast must not be negative"),
        (0 <= (config.train.progressive_resize or 0) < 1, "train.progressive_resize must be in [0, 1)"),
        (config.train.temperature > 0, "train.temperature must be positive"),
        (config.train.margin is None or 0 <= config.train.margin <= 1.5, "train.margin must be in [0, 1.5]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    _check_margin_loss(config)


def _check_margin_loss(config: Config) -> None:
    """Options a margin loss cannot train with: soft targets, a linear probe, semi-supervision."""
    augment, why = config.augment, f"does not combine with train.loss {config.train.loss}"
    for key, given, reason in [
        ("augment.mixup", augment.mix_prob > 0 and augment.mixup > 0, "the margin needs one class per image"),
        ("augment.cutmix", augment.mix_prob > 0 and augment.cutmix > 0, "the margin needs one class per image"),
        ("augment.ricap", augment.mix_prob > 0 and augment.ricap > 0, "the margin needs one class per image"),
        ("transfer.linear_probe", config.transfer.linear_probe, "its cosine classifier is no linear layer"),
        ("semi.unlabeled", config.semi.unlabeled, "semi-supervised training uses cross-entropy"),
    ]:
        if given and config.train.loss != "cross-entropy":
            raise ConfigError(f"{key} {why}: {reason}.")
    if config.train.instance_contrast and config.train.loss == "cross-entropy":
        raise ConfigError("train.instance_contrast shapes an embedding: set train.loss (arcface, supcon, ...) too.")


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with config_to_dict (config.yaml of a run), validating it again."""
    sections = {name: _section_from_dict(name, values.get(name) or {}) for name in _SECTION_TYPES}
    config = Config(**sections, recipe=str(values.get("recipe") or "default"))
    validate(config)
    return config


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")


def load_config(path: Path) -> Config:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return config_from_dict(values)
