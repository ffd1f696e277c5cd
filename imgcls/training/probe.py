"""The linear probe: a classifier fitted by logistic regression on a frozen network's features.

On a few hundred pictures the pretrained network is the asset. A new classifier starts
random, and its gradients in the first steps of fine-tuning move the whole backbone (the
issue this fixes measured a first-epoch training loss of 5.8 for 7 classes). Fitting the
classifier first on the frozen pooled features (scikit-learn's LogisticRegression, the convex
problem solved to the end) gives fine-tuning a head that is already right; this is LP-FT
(Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"). The same fit is the whole
of a frozen-backbone run's head, so `--freeze-backbone` equals a logistic regression on the
network's features, the usual strong baseline.

Batch norm whose parameters are frozen, or all of it with transfer.freeze_bn, keeps its
pretrained statistics while the rest trains (`train_mode`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.device import autocast, to_device
from imgcls.inference.batched import rows_per_batch

log = logging.getLogger(__name__)


def train_mode(model: nn.Module, *, freeze_bn: bool) -> None:
    """model.train(), except batch norm layers that keep their statistics: all of them with
    `freeze_bn`, and always those whose weights are frozen (a frozen backbone stays frozen)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
            if freeze_bn or frozen:
                module.eval()


def eval_view(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """(N, H, W, C) uint8 training images as evaluation would decode them: images cached larger
    for random crops (the whole centre square) are cut to the evaluation crop and resized."""
    if images.shape[1] == pre.img_size:
        return images
    side = images.shape[1]
    keep = max(1, round(side * pre.crop_pct))
    start = (side - keep) // 2
    x = images[:, start : start + keep, start : start + keep].permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(pre.img_size, pre.img_size), mode=pre.interpolation, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@torch.inference_mode()
def pooled_features(
    model: nn.Module,
    images: torch.Tensor,
    pre: Preprocessing,
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    channels_last: bool = True,
    mirror: bool = False,
) -> np.ndarray:
    """(N, F) float32 features the classifier sees (timm's forward_head with pre_logits); with
    `mirror`, the mean of each image's and its mirror image's, as imgcls.retrieval.embed takes them."""
    was_training = model.training
    model.eval()
    out = []
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch_size = rows_per_batch(batch_size, pre.img_size**2, device)
    try:
        for start in range(0, len(images), batch_size):
            batch = eval_view(images[start : start + batch_size], pre)
            x = to_model_input(to_device(batch, device), pre, channels_last=channels_last)
            with autocast(autocast_dtype, x.device):
                features = model.forward_head(model.forward_features(x), pre_logits=True)
                if mirror:
                    flipped = x.flip(3).contiguous(memory_format=layout)
                    features = (features + model.forward_head(model.forward_features(flipped), pre_logits=True)) / 2
            out.append(features.float().flatten(1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def embedding_whitening(
    model: nn.Module,
    images: torch.Tensor,
    pre: Preprocessing,
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    seed: int,
) -> dict | None:
    """The whitening (imgcls.models.whitening) of the embedding of up to FIT_IMAGES of the
    training images, drawn with `seed`, as the checkpoint's metadata stores it. Their pooled
    features are the embedder's: averaged with the mirror image's when the checkpoint predicts
    with it (at the same shrinkage, fitted on one view the whitening of benchmarks/recognition.py's
    model recognised new classes 0.884 of the time and told an unknown ankle boot apart with
    AUROC 0.61; fitted on both views, 0.921 and 0.75), in the run's precision.

    None for a metric-learning model: its batch-norm neck is already an embedding trained for
    cosine comparison, and whitening it lowered new-class recognition (benchmarks/RESULTS.md,
    ArcFace on Fashion-MNIST: 0.353 -> 0.268)."""
    from imgcls.models.embedding import EmbeddingNet
    from imgcls.models.whitening import FIT_IMAGES, fit_whitening

    if not hasattr(model, "forward_head") or isinstance(model, EmbeddingNet) or len(images) < 2:
        return None
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:FIT_IMAGES]
    pooled = pooled_features(
        model,
        images[rows.sort().values],
        pre,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        mirror=pre.test_flip,
    )
    whitening = fit_whitening(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
    return None if whitening is None else whitening.to_dict()


def fit_linear_probe(model: nn.Module, features: np.ndarray, labels: np.ndarray, c: float) -> bool:
    """Set the model's linear classifier to the logistic regression of `labels` on `features`;
    False (and the head unchanged) when the classifier is not one linear layer."""
    from sklearn.linear_model import LogisticRegression

    head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not isinstance(head, nn.Linear) or head.in_features != features.shape[1]:
        log.info("linear probe skipped: the classifier is not one linear layer on the pooled features")
        return False
    fitted = LogisticRegression(C=c, max_iter=2000).fit(features, labels)
    weight, bias = _as_logits(fitted, head.out_features)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    log.info("linear probe: classifier fitted on %d frozen feature vectors", len(features))
    return True


def _as_logits(fitted, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class weights and biases whose softmax gives the regression's probabilities. With
    two classes scikit-learn fits one logit difference d: the logits are -d/2 and d/2."""
    coef, intercept = fitted.coef_.astype(np.float32), fitted.intercept_.astype(np.float32)
    if coef.shape[0] == 1 and num_classes == 2:
        coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, -1e4, dtype=np.float32)  # a class the regression never saw: never predicted
    weight[fitted.classes_] = coef
    bias[fitted.classes_] = intercept
    return weight, bias
