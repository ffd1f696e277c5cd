"""Starting from other weights: --pretrained files, frozen backbones, and teachers.

Reading a weights file and loading it into a model live in imgcls.models.weights (the data
doctor uses them too, and must not import training); they are re-exported here for the trainer.
"""

from __future__ import annotations

from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.config import Config
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import CheckpointError, ConfigError
from imgcls.models.registry import resolve
from imgcls.models.weights import load_pretrained, read_state_dict

__all__ = ["load_pretrained", "pretrained_normalisation", "read_state_dict", "set_backbone_trainable"]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classifier (timm's get_classifier)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for param in model.parameters():
        param.requires_grad = trainable or id(param) in head


def pretrained_normalisation(config: Config, channels: int) -> tuple[tuple, tuple] | None:
    """Fine-tuned weights keep the input statistics they were trained with: an imgcls
    checkpoint's own mean/std, or a timm model's pretrained (ImageNet) values for RGB; a CLIP
    backbone the statistics CLIP was trained with (their average for grey images, whose first
    convolution sums CLIP's RGB filters)."""
    if config.data.mean:  # set by the user, or by the pretrained weights' config
        mean, std = tuple(config.data.mean), tuple(config.data.std)
        if len(mean) == channels:
            return mean, std
        if channels == 1:  # grey images into RGB-trained weights: their channels' average
            return (sum(mean) / len(mean),), (sum(std) / len(std),)
        raise ConfigError(f"data.mean has {len(mean)} values; these images have {channels} channels.")
    if config.model.name.startswith("clip:"):
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if channels == 3:
            return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
        return (sum(OPENAI_DATASET_MEAN) / 3,), (sum(OPENAI_DATASET_STD) / 3,)
    path = config.transfer.pretrained
    if not path:
        return None
    if str(path).endswith(".safetensors"):
        try:
            meta = ckpt.read_metadata(path)
        except CheckpointError:
            meta = None  # bare weights: not an imgcls checkpoint
        if meta is not None:
            pre = Preprocessing.from_dict(meta["preprocess"])
            return (pre.mean, pre.std) if pre.channels == channels else None
    if channels != 3:
        return None
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(resolve(config.model.name).name.removeprefix("timm:"))
    except (RuntimeError, ValueError, AttributeError):
        return None
    if cfg is None or not getattr(cfg, "mean", None):
        return None
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)
