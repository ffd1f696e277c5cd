"""Loss functions: cross-entropy (label smoothing, class weights, soft targets), the losses of
metric learning (margins: ArcFace, CosFace, sub-center ArcFace; two views: SupCon, NT-Xent),
distillation, and the multi-label losses (binary cross-entropy, timm's Asymmetric Loss)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n_samples / (n_classes * n_c), as scikit-learn's class_weight="balanced"; absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationLoss(nn.Module):
    """Cross-entropy against hard labels (N,) or soft targets (N, K) from Mixup/CutMix/RICAP.

    Label smoothing (Szegedy et al. 2016) and class weights apply to both forms.
    """

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            return F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return soft_target_cross_entropy(logits, target, self.label_smoothing, self.class_weights)


# train.loss values that put a margin on a cosine classifier (imgcls.models.embedding), with
# their papers' margins: ArcFace adds 0.5 rad to the angle to the true class (Deng et al.
# 2019; sub-center ArcFace, Deng et al. 2020, the same), CosFace subtracts 0.35 from its
# cosine (Wang et al. 2018).
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "subcenter-arcface": 0.5}


class MarginLoss(ClassificationLoss):
    """Cross-entropy on cosine logits (scale x cos, from the model's CosineClassifier) after the
    true class's cosine is made smaller by a margin: the network must put an image closer to
    its class than plain softmax asks, which is what makes its embedding compare images of
    classes it never saw. Prediction uses the logits without the margin.

    pytorch-metric-learning's ArcFaceLoss / CosFaceLoss / SubCenterArcFaceLoss give the margin
    (modify_cosine_of_target_classes, with ArcFace's fallback where theta + m passes pi). Their
    forward takes embeddings and owns the class weights; imgcls's loop gives a loss the logits,
    and the weights live in the model so a checkpoint predicts without this library, so only
    their margin function is used here."""

    def __init__(
        self,
        kind: str,
        *,
        scale: float,
        margin: float | None = None,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__(label_smoothing, class_weights)
        from imgcls.extras import require

        pml = require("pytorch_metric_learning.losses", "metric")
        margin = DEFAULT_MARGINS[kind] if margin is None else margin
        # Only the margin function is used, so the library's own weight matrix is 1 x 1.
        shape = {"num_classes": 1, "embedding_size": 1}
        if kind == "cosface":
            margin_loss = pml.CosFaceLoss(margin=margin, scale=scale, **shape)
        elif kind == "arcface":
            margin_loss = pml.ArcFaceLoss(margin=math.degrees(margin), scale=scale, **shape)  # it takes degrees
        else:
            margin_loss = pml.SubCenterArcFaceLoss(margin=math.degrees(margin), scale=scale, sub_centers=1, **shape)
        self.kind, self.margin, self.scale = kind, margin, float(scale)
        self._with_margin = margin_loss.modify_cosine_of_target_classes

    def margin_logits(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The logits with the margin on each image's true class."""
        # acos' is infinite at +-1: a cosine of exactly 1 would give a NaN gradient.
        cosine = (logits / self.scale).clamp(-1 + 1e-6, 1 - 1e-6)
        true_cosine = cosine.gather(1, target[:, None]).squeeze(1)
        shift = (self._with_margin(true_cosine) - true_cosine)[:, None]
        return self.scale * (cosine + F.one_hot(target, logits.shape[1]).to(cosine.dtype) * shift)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != 1:
            raise ValueError("a margin loss needs one class per image, not soft targets (mixup, cutmix, ricap)")
        return super().forward(self.margin_logits(logits, target), target)


class TwoViewLoss(nn.Module):
    """The term of a metric-learning loss that compares embeddings of two augmented views of
    every image in a batch (rows 0..B-1 and B..2B-1): the supervised contrastive loss (Khosla et
    al. 2020: every image of the same class is a positive) and/or SimCLR's NT-Xent (Chen et al.
    2020: only the other view of the same image is). A margin loss makes images of a class
    agree; the instance term keeps what still tells them apart, which is what an embedding needs
    for classes it never trained on. pytorch-metric-learning's SupConLoss computes the first;
    NT-Xent is `nt_xent` below (on L2-normalised embeddings)."""

    def __init__(self, *, supcon: float, instance: float, temperature: float):
        super().__init__()
        from imgcls.extras import require

        pml = require("pytorch_metric_learning.losses", "metric")
        self.supcon_weight, self.instance_weight = float(supcon), float(instance)
        self.supcon = pml.SupConLoss(temperature=temperature)
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = embeddings.new_zeros(())
        if self.supcon_weight:
            loss = loss + self.supcon_weight * self.supcon(embeddings, labels)
        if self.instance_weight:
            loss = loss + self.instance_weight * nt_xent(embeddings, self.temperature)
        return loss


def nt_xent(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over two views (rows i and i + B are the same image): each row's
    positive is its other view, every other row a negative; the cosine similarities over the
    temperature, cross-entropy against the other view. Written as one matrix product because
    pytorch-metric-learning's NTXentLoss, which gives the same value, lists every pair: 2.1 s
    a step for 512 embeddings on a 2-core CPU against 2 ms here, and it made two-view training
    ~6x slower than one view."""
    z = F.normalize(embeddings.float(), dim=1)
    similarity = z @ z.T / temperature
    rows = len(z)
    self_pairs = torch.eye(rows, dtype=torch.bool, device=z.device)
    other_view = torch.arange(rows, device=z.device).roll(rows // 2)
    return F.cross_entropy(similarity.masked_fill(self_pairs, float("-inf")), other_view)


def two_view_loss(kind: str, instance_contrast: float, temperature: float) -> TwoViewLoss | None:
    """The two-view term of train.loss `kind` with train.instance_contrast, or None (one view)."""
    supcon = 1.0 if kind == "supcon" else 0.0
    if not (supcon or instance_contrast):
        return None
    return TwoViewLoss(supcon=supcon, instance=instance_contrast, temperature=temperature)


def soft_target_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log p_k; class weights weigh each sample by its target mix."""
    num_classes = logits.shape[1]
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_sample = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if class_weights is None:
        return per_sample.mean()
    sample_weights = target @ class_weights
    return (per_sample * sample_weights).sum() / sample_weights.sum().clamp_min(1e-12)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss.

    T^2 keeps the soft term's gradients on the scale of the hard term's as T changes.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard_loss


def build_loss(
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    *,
    kind: str = "cross-entropy",
    margin: float | None = None,
    scale: float = 30.0,
) -> ClassificationLoss:
    """Cross-entropy, or with kind arcface / cosface / subcenter-arcface a MarginLoss on the
    logits of an embedding model whose cosine classifier uses this scale. supcon's classifier
    learns with plain cross-entropy on its cosine logits (its embedding from TwoViewLoss)."""
    if kind in ("cross-entropy", "supcon"):
        return ClassificationLoss(label_smoothing, class_weights)
    return MarginLoss(kind, scale=scale, margin=margin, label_smoothing=label_smoothing, class_weights=class_weights)


# Positive weights are capped: a class seen once in 10,000 images would otherwise dominate.
MAX_POSITIVE_WEIGHT = 10.0


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per class, negatives / positives in the training targets (N, K), between 1 and 10: a rare
    label's few positives weigh as much as its many negatives, as in BCEWithLogitsLoss's pos_weight."""
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT), dtype=torch.float32)


def build_multilabel_loss(kind: str, pos_weight: torch.Tensor | None) -> nn.Module:
    """Binary cross-entropy per class ("bce"), or Asymmetric Loss ("asl", Ridnik et al. 2021),
    which down-weights the many easy negatives of multi-label data; both averaged per element."""
    if kind == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        return AsymmetricLossMultiLabel(reduction="mean", pos_weight=pos_weight)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def correct_predictions(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct answers in a batch (a 0-d tensor on the logits' device, so reading it can wait):
    the top class for labels (N,); for multi-label targets (N, K) images whose every class is
    right at probability 0.5 (subset accuracy)."""
    if target.ndim == 1:
        return (logits.argmax(1) == target).sum()
    return ((logits > 0) == (target > 0.5)).all(dim=1).sum()
