"""Scoring a model while it trains: each epoch's validation (shared out over the processes of a
distributed run), and the final metrics of the best checkpoint, computed as `imgcls evaluate`
computes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.batched import batched_logits
from imgcls.metrics import choose_thresholds, classification_metrics, mean_average_precision, multilabel_metrics
from imgcls.training import distributed
from imgcls.training.probe import embedding_whitening
from imgcls.training.run import RunSetup


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    device: torch.device | None = None,
    shared: bool = False,
) -> tuple[float, float, torch.Tensor]:
    """(loss, accuracy, probabilities) on a labelled set, in eval mode. `shared`: the processes
    of a distributed run each score their share of the images and gather the scores.

    Multi-label targets (N, K): binary cross-entropy, independent sigmoid probabilities, and
    mAP in the place of accuracy (it ranks the epochs and picks the best checkpoint)."""
    was_training = model.training
    model.eval()  # batch norm from its running statistics, no dropout; and validation never updates them
    try:
        rows = distributed.my_rows(len(images)) if shared else slice(None)
        logits = batched_logits(
            model,
            images[rows],
            preprocessing,
            batch_size=batch_size,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype,
            device=device,
        )
        if shared:
            logits = distributed.gather_rows(logits, len(images))
    finally:
        model.train(was_training)
    if labels.ndim == 2:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
        probs = logits.sigmoid()
        return loss, mean_average_precision(labels.numpy(), probs.numpy()) or 0.0, probs
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy, logits.softmax(1)


@dataclass(frozen=True)
class ValidatedEpoch:
    """An epoch's validation: its loss and score, and the probabilities behind them."""

    epoch: int
    loss: float
    score: float
    probs: torch.Tensor


def validate_epoch(
    setup: RunSetup, model: nn.Module, val: tuple[torch.Tensor, torch.Tensor], epoch: int
) -> ValidatedEpoch:
    """Epoch `epoch` scored on the validation set as training ranks its epochs: under the run's
    autocast and layout, each process of a distributed run scoring its share."""
    tc = setup.config.train
    loss, score, probs = evaluate(
        model,
        *val,
        setup.preprocessing,
        batch_size=tc.eval_batch_size,
        autocast_dtype=setup.autocast_dtype,
        channels_last=tc.channels_last,
        device=setup.device,
        shared=True,
    )
    return ValidatedEpoch(epoch, loss, score, probs)


def final_metrics(
    run_dir: Path,
    setup: RunSetup,
    model: nn.Module,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    train_x: torch.Tensor | None = None,
    last: ValidatedEpoch | None = None,
) -> tuple[dict, torch.Tensor]:
    """Metrics and probabilities of the best checkpoint on val, in float32, as `imgcls evaluate`
    computes them; then the checkpoint's final save, with that float32 score (the epoch's own,
    under autocast, kept beside it when it differs), multi-label the per-class thresholds
    chosen on these probabilities, and its embedding's whitening fitted on `train_x` (the
    training images; the validation images when the run streamed them).

    When the best checkpoint is the `last` epoch validated, and that validation was already
    this very float32 forward (no autocast, one process, the same batches), its
    probabilities are taken instead of running it again: at 224 px on a CPU that is seconds."""
    path = run_dir / "best.safetensors"
    tensors, meta = ckpt.load_checkpoint(path)
    model.load_state_dict(ckpt.read_model_tensors(tensors, model.state_dict()))
    tc = setup.config.train
    same_forward = setup.autocast_dtype is None and distributed.world_size() == 1
    if same_forward and last is not None and last.epoch == meta["training"].get("epoch"):
        probs = last.probs
    else:
        _, _, probs = evaluate(
            model,
            val_x,
            val_y,
            setup.preprocessing,
            batch_size=tc.eval_batch_size,
            channels_last=tc.channels_last,
            device=setup.device,
        )
    skipped = setup.train.skipped + setup.val.skipped
    y, p = val_y.numpy(), probs.numpy()
    if setup.multilabel:
        thresholds, fallback = choose_thresholds(y, p)
        metrics = multilabel_metrics(y, p, setup.sources.classes, thresholds, fallback, skipped)
        meta["thresholds"] = {"per_class": [float(t) for t in thresholds], "default": fallback}  # exact: ties matter
        score = metrics["mAP"]
    else:
        metrics = classification_metrics(y, p, setup.sources.classes, skipped)
        score = metrics["accuracy"]
    training = meta["training"]
    if training.get("val_accuracy") != score:
        training["epoch_val_accuracy"] = training.get("val_accuracy")  # as measured during training
    training["val_accuracy"] = score
    if tc.whiten_embedding:
        whitening = embedding_whitening(
            model,
            val_x if train_x is None else train_x,
            setup.preprocessing,
            batch_size=tc.eval_batch_size,
            device=setup.device,
            autocast_dtype=setup.autocast_dtype,
            seed=tc.seed,
        )
        if whitening is not None:
            meta["whitening"] = whitening
    ckpt.save_checkpoint(path, tensors, meta)
    return metrics, probs
