"""Running a model over many images in batches: shared by evaluation, prediction and export."""

from __future__ import annotations

import torch
from torch import nn

from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.device import autocast, to_device


def to_probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Softmax over the classes; independent sigmoids for multi-label models."""
    return logits.sigmoid() if multilabel else logits.softmax(1)


def is_multilabel(meta: dict) -> bool:
    return meta.get("task") == "multi-label"


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    model.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


@torch.inference_mode()
def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 512,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """float32 logits (N, K) of (N, H, W, C) uint8 images, in eval mode."""
    device = device or torch.device("cpu")
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_device(images[start : start + batch_size], device)
        x = to_model_input(batch, preprocessing, channels_last=channels_last)
        with autocast(autocast_dtype, device):
            logits = model(x).float()
            if preprocessing.test_flip:
                mirrored = x.flip(3)
                if channels_last:
                    mirrored = mirrored.contiguous(memory_format=torch.channels_last)
                logits = (logits + model(mirrored).float()) / 2
            outputs.append(logits)
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)  # one copy back: each waits for the GPU
