"""Everything a training run works with, built from its config: `prepare(config)` gives
the run's frozen setup and its optimisation state.

scan sources -> decode once -> preprocessing from the training images -> model (Kaiming
initialised, or from --pretrained weights, backbone maybe frozen) -> optimizer, schedule,
loss, EMA, teacher. The model name and size are checked before any image is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.config import AugmentConfig, Config, DataConfig, DistillConfig
from imgcls.data.augment import build_per_image_transform
from imgcls.data.cache import ImageCache, build_cache
from imgcls.data.loader import steps_per_epoch
from imgcls.data.preprocess import Preprocessing, channel_stats
from imgcls.data.resolve import resolve_training_data
from imgcls.data.sources import DataSources
from imgcls.data.stream import ShardStream
from imgcls.device import choose_autocast, grad_scaler, resolve_device
from imgcls.errors import CheckpointError, ConfigError, DataError
from imgcls.models import create_model
from imgcls.models.embedding import EmbeddingNet, model_arguments
from imgcls.models.pretrained import resolve_start_weights
from imgcls.models.seed import SeedNet, kaiming_init
from imgcls.training import distributed
from imgcls.training.checks import check_model_config, check_task_options
from imgcls.training.losses import (
    balanced_class_weights,
    build_loss,
    build_multilabel_loss,
    positive_weights,
    two_view_loss,
)
from imgcls.training.optim import PlateauState, build_optimizer, build_schedule, epoch_side
from imgcls.training.streaming import streamed_training_set, use_stream
from imgcls.training.transfer import load_pretrained, pretrained_normalisation, set_backbone_trainable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    preprocessing: Preprocessing


@dataclass(frozen=True)
class RunSetup:
    """What a run trains on and with, built once and never reassigned: the data, its
    preprocessing, the model (its weights change, the object does not), the loss and the
    numeric settings."""

    config: Config
    sources: DataSources
    train: ImageCache
    val: ImageCache
    preprocessing: Preprocessing
    model: nn.Module
    loss_fn: nn.Module  # (logits, targets) -> loss: cross-entropy, or BCE/ASL for multi-label
    autocast_dtype: torch.dtype | None
    device: torch.device
    per_image: Callable[[torch.Tensor], torch.Tensor] | None = None  # torchvision v2 transform
    teacher: Teacher | None = None
    # metric learning with two augmented views of each image: (embeddings, labels) -> loss
    two_view_loss: nn.Module | None = None
    progressive_resize: float = 0.0  # train.progressive_resize as resolved for this model; 0 = off
    # Streamed training (imgcls.training.streaming): batches come from here, and `train` holds the
    # training set's labels and paths but no pixels.
    stream: ShardStream | None = None

    @property
    def multilabel(self) -> bool:
        return self.sources.task == "multi-label"

    def metadata(self, **training) -> dict:
        return {
            "task": self.sources.task,
            "model": {"name": self.config.model.name, "kwargs": model_arguments(self.config.model, self.config.train)},
            "classes": list(self.sources.classes),
            "preprocess": self.preprocessing.to_dict(),
            "training": training,
            **({"pretrained": self.pretrained} if self.pretrained else {}),
        }

    @property
    def pretrained(self) -> dict | None:
        """Where the starting weights came from, as the checkpoint and the report record it."""
        transfer = self.config.transfer
        if not transfer.pretrained:
            return None
        return {"name": transfer.pretrained, "source": transfer.pretrained_source, "sha256": transfer.pretrained_sha256}


@dataclass(frozen=True)
class Optimisation:
    """What the optimizer steps carry from one step to the next; a new one (dataclasses.replace)
    when the run re-wraps its model for several processes."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    plateau: PlateauState | None
    scaler: torch.amp.GradScaler  # loss scaling for float16; disabled (a pass-through) otherwise
    ema: nn.Module | None = None  # timm's ModelEmaV3; its .module is what is evaluated and saved
    ddp: nn.Module | None = None  # DistributedDataParallel around the model, with several processes


def eval_model(setup: RunSetup, opt: Optimisation) -> nn.Module:
    """The network that is validated and saved: the weight average when the run keeps one."""
    return opt.ema.module if opt.ema is not None else setup.model


# Random resized crops are cut from training images cached this much larger than the model's
# input (the whole centre square), so a crop of the whole image still has detail to resample;
# 1.15 ~ 1 / 0.875, the share of the image timm's evaluation crop keeps.
CROP_CACHE_SCALE = 1.15


def decode_val(data: DataConfig, sources: DataSources, channels: int) -> ImageCache:
    """The validation images, decoded once with the training set's channel count, exactly as
    prediction will decode them."""
    return build_cache(
        sources.val,
        size=data.img_size,
        resize=data.resize,
        channels=channels,
        max_pixels=data.max_pixels,
        max_file_mb=data.max_file_mb,
        workers=data.decode_workers,
        desc="decode val",
        crop_pct=data.crop_pct,
        interpolation=data.interpolation,
    )


def train_decode_size(data: DataConfig, augment: AugmentConfig) -> tuple[int, float]:
    """(side, crop share) the training images are cached at: as evaluation decodes them, or
    the whole centre square at CROP_CACHE_SCALE x the input when the recipe crops at random."""
    if augment.random_resized_crop > 0:
        return round(data.img_size * CROP_CACHE_SCALE), 1.0
    return data.img_size, data.crop_pct


def decode_sources(data: DataConfig, augment: AugmentConfig, sources: DataSources) -> tuple[ImageCache, ImageCache]:
    """The training and validation images, decoded once into the cache."""
    size, crop_pct = train_decode_size(data, augment)
    train = build_cache(
        sources.train,
        size=size,
        resize=data.resize,
        channels=None if data.channels == "auto" else int(data.channels),
        max_pixels=data.max_pixels,
        max_file_mb=data.max_file_mb,
        workers=data.decode_workers,
        desc="decode train",
        crop_pct=crop_pct,
        interpolation=data.interpolation,
    )
    val = decode_val(data, sources, train.channels)
    if train.labels.ndim == 2:  # multi-label: a class is present when any image has it
        missing = [name for i, name in enumerate(sources.classes) if not train.labels[:, i].any()]
    else:
        missing = [name for i, name in enumerate(sources.classes) if not (train.labels == i).any()]
    if missing:
        raise DataError(f"no training image of class(es) {', '.join(repr(n) for n in missing)} could be decoded.")
    return train, val


def _teacher(distill: DistillConfig, sources: DataSources, pre: Preprocessing, device: torch.device) -> Teacher | None:
    if distill.teacher is None:
        return None
    model, teacher_pre, meta = ckpt.load_model(distill.teacher)
    if tuple(meta["classes"]) != sources.classes:
        raise ConfigError(f"teacher {distill.teacher} has classes {meta['classes']}, not {list(sources.classes)}.")
    if (teacher_pre.img_size, teacher_pre.channels) != (pre.img_size, pre.channels):
        raise ConfigError(
            f"teacher {distill.teacher} takes {teacher_pre.img_size} px, {teacher_pre.channels} channel(s); "
            f"this run uses {pre.img_size} px, {pre.channels}. Train with the teacher's --img-size."
        )
    for param in model.parameters():
        param.requires_grad = False
    log.info(
        "distilling from %s (%s), alpha %.2f, temperature %.1f",
        distill.teacher,
        meta["model"]["name"],
        distill.alpha,
        distill.temperature,
    )
    return Teacher(model.to(device, memory_format=torch.channels_last), teacher_pre)


def build_model(config: Config, num_classes: int, pre: Preprocessing) -> nn.Module:
    kwargs = model_arguments(config.model, config.train)  # with a margin loss, an embedding model
    model = create_model(
        config.model.name, num_classes=num_classes, in_chans=pre.channels, img_size=pre.img_size, **kwargs
    )
    backbone = model.backbone if isinstance(model, EmbeddingNet) else model
    if config.transfer.pretrained:
        start = resolve_start_weights(config.transfer.pretrained, config.model.name)
        recorded = config.transfer.pretrained_sha256
        if recorded and start.sha256 != recorded:
            raise CheckpointError(
                f"pretrained weights {start.file} are not the ones this run started from "
                f"(sha256 {start.sha256[:12]}…, config.yaml says {recorded[:12]}…)."
            )
        load_pretrained(backbone, start.file)  # an embedding model's neck and head start fresh
    elif config.train.init == "kaiming" and isinstance(backbone, SeedNet):
        kaiming_init(backbone)  # timm models come initialised as their papers say
    if config.transfer.freeze_backbone:
        set_backbone_trainable(model, False)
    return model


def prepare(config: Config, device: torch.device | None = None) -> tuple[RunSetup, Optimisation]:
    """A run's setup and its optimisation state, on `device` (default: train.device)."""
    setup = prepare_setup(config, device)
    return setup, build_optimisation(setup, steps_per_epoch(len(setup.train), config.train.batch_size))


def prepare_setup(config: Config, device: torch.device | None = None) -> RunSetup:
    """Data (scanned, checked, decoded), preprocessing, model, loss, on `device`."""
    data, tc = config.data, config.train
    check_model_config(config)
    device = device or resolve_device(tc.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # else pinned memory and new tensors would open a context on cuda:0
    sources = resolve_training_data(
        data.train,
        data.val,
        val_fraction=data.val_fraction,
        seed=tc.seed,
        task=data.task,
        allow_outside=data.allow_outside,
    )
    check_task_options(config, sources.task)
    log.info(
        "data: %s; %d classes, %d train and %d val images",
        sources.layout,
        len(sources.classes),
        len(sources.train),
        len(sources.val),
    )
    stream, stats = None, None
    if use_stream(config, sources):
        train, stream, stats = streamed_training_set(config, sources)
        val = decode_val(data, sources, train.channels)
    else:
        train, val = decode_sources(data, config.augment, sources)
    mean, std = pretrained_normalisation(config, train.channels) or stats or channel_stats(train.images)
    pre = Preprocessing(
        data.img_size,
        train.channels,
        mean,
        std,
        data.resize,
        data.max_pixels,
        test_flip=config.augment.test_flip,
        crop_pct=data.crop_pct,
        interpolation=data.interpolation,
    )
    model = build_model(config, len(sources.classes), pre)
    model = model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.preserve_format)
    if sources.task == "multi-label":
        loss_fn = build_multilabel_loss(tc.multilabel_loss, positive_weights(train.labels))
    else:
        weights = balanced_class_weights(train.labels, len(sources.classes)) if tc.class_weights == "balanced" else None
        loss_fn = build_loss(tc.label_smoothing, weights, kind=tc.loss, margin=tc.margin, scale=tc.scale)
    loss_fn = loss_fn.to(device)  # its class or positive weights
    dtype = choose_autocast(tc.precision, device)
    log.info(
        "model %s, %s parameters, on %s, %s, %s",
        config.model.name,
        f"{sum(p.numel() for p in model.parameters()):,}",
        device,
        precision_name(dtype),
        "channels_last" if tc.channels_last else "NCHW",
    )
    return RunSetup(
        config,
        sources,
        train,
        val,
        pre,
        model,
        loss_fn,
        dtype,
        device,
        per_image=build_per_image_transform(config.augment, data.img_size),
        teacher=_teacher(config.distill, sources, pre, device),
        two_view_loss=two_view_loss(tc.loss, tc.instance_contrast, tc.temperature),
        progressive_resize=progressive_resize(config, model, train.channels, device),
        stream=stream,
    )


# Progressive resizing's first-epoch fraction when train.progressive_resize is auto (none).
AUTO_PROGRESSIVE_START = 0.5


def progressive_resize(config: Config, model: nn.Module, channels: int, device: torch.device) -> float:
    """train.progressive_resize as this run uses it. Auto: AUTO_PROGRESSIVE_START when a network
    learns from random weights at 128 px or more (pretrained weights already know their size's
    features, and small images have no detail to skip), over at least 3 epochs, supervised, and
    the model takes the smaller input; else off. A fraction set by hand that the model refuses
    stops the run in one line."""
    tc, side = config.train, config.data.img_size
    auto = tc.progressive_resize is None
    if auto and (side < 128 or config.transfer.pretrained or tc.epochs < 3 or config.semi.unlabeled):
        return 0.0
    start = AUTO_PROGRESSIVE_START if auto else float(tc.progressive_resize)
    smallest = epoch_side(side, start, 1, tc.epochs)
    if start and not _takes_side(model, channels, smallest, device):
        if auto:
            return 0.0
        raise ConfigError(
            f"train.progressive_resize: model {config.model.name} does not take {smallest}-px images; set it to 0."
        )
    if start and distributed.is_main():
        why = f" (auto: random weights, {side} px)" if auto else ""
        log.info("progressive resizing%s: epoch 1 trains at %d px, growing to %d by the last", why, smallest, side)
    return start


def _takes_side(model: nn.Module, channels: int, side: int, device: torch.device) -> bool:
    """Whether the network runs on side x side images (a CNN with global pooling does; a vision
    transformer or a network ending in a fixed-size flatten does not)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, side, side, device=device))
        return True
    except (RuntimeError, ValueError, AssertionError):
        return False
    finally:
        model.train(training)


def build_optimisation(setup: RunSetup, batches_per_epoch: int) -> Optimisation:
    """Optimizer, schedule (over `batches_per_epoch` batches an epoch), loss scaler and EMA."""
    config, model = setup.config, setup.model
    tc = config.train
    steps = -(-batches_per_epoch // tc.accumulate)
    few = steps * tc.epochs < 100 and not config.transfer.pretrained and not tc.time_budget
    if few and distributed.is_main():
        log.warning(  # fine-tuning needs few steps; every process would say the same
            "only %d optimizer steps in the whole run: a smaller --batch-size or more --epochs "
            "will likely train better",
            steps * tc.epochs,
        )
    optimizer = build_optimizer(
        model,
        config.optim,
        batch_size=tc.batch_size * tc.accumulate,
        head=model.get_classifier(),
        head_lr_scale=config.transfer.head_lr_scale,
    )
    scheduler, plateau = build_schedule(optimizer, config.optim, steps_per_epoch=steps, epochs=tc.epochs)
    ema = None
    if tc.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=tc.ema_decay, use_warmup=True)
    return Optimisation(optimizer, scheduler, plateau, grad_scaler(setup.autocast_dtype, setup.device), ema)


def precision_name(dtype: torch.dtype | None) -> str:
    names = {torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast with loss scaling"}
    return names.get(dtype, "float32")
