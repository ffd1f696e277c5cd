"""Every number of an evaluation, from true labels and predicted probabilities.

scikit-learn computes each metric it has; only the expected calibration error is written
here, because scikit-learn offers the calibration curve but not ECE itself.
"""

from __future__ import annotations

import numpy as np


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| per confidence bin, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present; None when it is undefined."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...], skipped_files: list[dict] | None = None
) -> dict:
    """The metrics.json of the contract (see DESIGN.md) for single-label classification."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    all_labels = np.arange(n_classes)
    predicted = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=all_labels, zero_division=0
    )
    # Macro averages run over the classes present in the evaluated set (as ROC AUC does):
    # a class with no images there has no recall to average.
    present = np.unique(labels)
    macro = precision_recall_fscore_support(labels, predicted, labels=present, average="macro", zero_division=0)
    top5 = float(top_k_accuracy_score(labels, probs, k=5, labels=all_labels)) if n_classes >= 5 else None
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "top5_accuracy": top5,
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "roc_auc_macro": _roc_auc(labels, probs),
        "log_loss": float(log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=all_labels)),
        "ece": expected_calibration_error(labels, probs),
        "num_samples": int(len(labels)),
        "classes": list(classes),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=all_labels).tolist(),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "skipped_files": list(skipped_files or []),
    }
