"""Metric-learning models: any registry backbone, a linear + batch-norm neck, a cosine classifier.

Trained with a margin loss (ArcFace, CosFace, sub-center ArcFace: imgcls.training.losses),
the neck's output is an embedding in which images of one class lie at a small angle to each
other and at a large one to other classes, also for classes the network never saw: this is
what `imgcls embed`, `gallery`, `recognize`, `search` and `cluster` compare. The model stays
a classifier to the rest of imgcls: it returns logits (scale x the cosine between the
normalised embedding and each class's normalised weight), so evaluation, prediction, the
checkpoint and ONNX export need nothing new; only the training loss adds the margin.

The checkpoint rebuilds it from its metadata: `create_model(name, ..., embedding={"dim": D,
"subcenters": k, "scale": s})`, which `imgcls.models.create_model` routes here.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import ModelConfig, TrainConfig
from imgcls.models import registry

EMBEDDING_KEYS = ("dim", "subcenters", "scale")


class CosineClassifier(nn.Module):
    """logits = scale * cos(embedding, class weight); with k sub-centers per class (Deng et al.
    2020) a class's cosine is that of its closest sub-center.

    Written here rather than taken from pytorch-metric-learning, whose ArcFaceLoss object holds
    the same weight matrix: a checkpoint must predict, serve and export without the training
    extra, and this is one normalised matrix product."""

    def __init__(self, dim: int, num_classes: int, subcenters: int = 1, scale: float = 30.0):
        super().__init__()
        self.num_classes, self.subcenters, self.scale = num_classes, subcenters, float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cos

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embedding)


class MetricHead(nn.Module):
    """Pooled backbone features -> neck (linear, batch norm: the embedding) -> cosine classifier.

    The batch-norm neck centres the features (a ReLU/GELU network's pooled features are all
    positive, so their cosines would crowd into one orthant) and is where the embedding is read,
    as in ArcFace's output layer and re-identification's BNNeck (Luo et al. 2019)."""

    def __init__(self, in_features: int, dim: int, num_classes: int, subcenters: int, scale: float):
        super().__init__()
        self.neck = nn.Sequential(nn.Linear(in_features, dim, bias=False), nn.BatchNorm1d(dim))
        self.classifier = CosineClassifier(dim, num_classes, subcenters, scale)

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.neck(features.flatten(1))
        return embedding if pre_logits else self.classifier(embedding)


class EmbeddingNet(nn.Module):
    """A backbone without its classifier plus a MetricHead, behind timm's model interface:
    forward_head(..., pre_logits=True) is the trained embedding, num_features its width, and
    get_classifier() the whole metric head (neck and cosine classifier: both are new and train
    together, also when the backbone is frozen)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int, subcenters: int = 1, scale: float = 30.0):
        super().__init__()
        in_features = int(getattr(backbone, "head_hidden_size", 0) or backbone.num_features)
        self.backbone = backbone
        self.head = MetricHead(in_features, dim, num_classes, subcenters, scale)
        self.num_features = self.head_hidden_size = dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(self.backbone.forward_head(x, pre_logits=True), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor, with_embedding: bool = False):
        """The logits; with_embedding: (logits, embedding), for losses that compare embeddings
        (a keyword through the call, so DistributedDataParallel still sees the forward)."""
        embedding = self.forward_head(self.forward_features(x), pre_logits=True)
        logits = self.head.classifier(embedding)
        return (logits, embedding) if with_embedding else logits

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        old = self.head.classifier
        self.head = MetricHead(self.head.neck[0].in_features, self.num_features, num_classes, old.subcenters, old.scale)
        self.num_classes = num_classes


def _without_classifier(backbone: nn.Module) -> nn.Module:
    """The backbone with its classifier replaced by nn.Identity: built with num_classes=0, timm
    models already have one; imgcls's seed models keep a 0-wide linear layer, removed here so
    the checkpoint holds no unused tensors."""
    classifier = backbone.get_classifier()
    for name, child in backbone.named_children():
        if child is classifier and not isinstance(child, nn.Identity):
            setattr(backbone, name, nn.Identity())
    return backbone


def create_model(
    name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 224, embedding: dict | None = None, **kwargs
) -> nn.Module:
    """registry.create_model, or with `embedding` ({"dim", "subcenters", "scale"}) that
    architecture as the backbone of an EmbeddingNet."""
    if embedding is None:
        return registry.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    unknown = sorted(set(embedding) - set(EMBEDDING_KEYS))
    if unknown:
        raise ValueError(f"unknown embedding setting(s) {', '.join(unknown)}; expected {', '.join(EMBEDDING_KEYS)}")
    with warnings.catch_warnings():  # a seed model's 0-wide classifier, replaced below
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        backbone = registry.create_model(name, num_classes=0, in_chans=in_chans, img_size=img_size, **kwargs)
    return EmbeddingNet(
        _without_classifier(backbone),
        num_classes,
        dim=int(embedding["dim"]),
        subcenters=int(embedding.get("subcenters", 1)),
        scale=float(embedding.get("scale", 30.0)),
    )


def model_arguments(model: ModelConfig, train: TrainConfig) -> dict:
    """create_model's keyword arguments for a run, as its checkpoint records them (so the
    checkpoint rebuilds the same model): model.kwargs, plus `embedding` when a margin loss
    trains an embedding model."""
    if train.loss == "cross-entropy":
        return dict(model.kwargs)
    subcenters = model.subcenters if train.loss == "subcenter-arcface" else 1
    return {**model.kwargs, "embedding": {"dim": model.embedding_dim, "subcenters": subcenters, "scale": train.scale}}
