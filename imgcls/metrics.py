"""Every number of an evaluation, from true labels and predicted probabilities.

scikit-learn computes each metric it has (accuracy, precision/recall/F1, top-k, log loss,
ROC and precision-recall curves, AUC, AP, the confusion matrix); written here are only
what it lacks: the expected calibration error with its reliability bins, and the
accuracy-coverage curve of a model that may abstain below a confidence.

`classification_metrics` gives the numbers of metrics.json; `roc_curves`, `pr_curves`,
`reliability_bins` and `coverage_curve` give the curves the report draws, from the same
inputs, so a plot and its number cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 15
# Confidence thresholds listed in metrics.json's "selective" table (the report draws them all).
SELECTIVE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Curve:
    """One curve of one class: x, y and the area (AUC for ROC, AP for precision-recall)."""

    x: np.ndarray
    y: np.ndarray
    area: float


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width confidence bins: mean confidence, accuracy and count of the samples in each."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| per confidence bin, weighted by bin size."""
    total = max(len(labels), 1)
    return float(
        sum(
            r["count"] / total * abs(r["accuracy"] - r["confidence"])
            for r in reliability_bins(labels, probs, bins)
            if r["count"]
        )
    )


def coverage_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threshold, coverage, accuracy): answering only when the top probability is at least
    the threshold, the fraction of samples answered and the accuracy on them. One point per
    distinct confidence, from the most confident sample down to all of them."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    answered = np.arange(1, len(labels) + 1)
    accuracy = np.cumsum(correct) / answered
    # Ties share one threshold: keep the last sample of each run of equal confidences.
    last = np.r_[confidence[1:] != confidence[:-1], True] if len(labels) else np.zeros(0, bool)
    return confidence[last], answered[last] / max(len(labels), 1), accuracy[last]


def selective_table(labels: np.ndarray, probs: np.ndarray, thresholds=SELECTIVE_THRESHOLDS) -> list[dict]:
    """Coverage and accuracy at a few confidence thresholds, for picking one."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    rows = []
    for t in thresholds:
        answered = confidence >= t
        rows.append(
            {
                "threshold": t,
                "coverage": float(answered.mean()) if len(labels) else 0.0,
                "accuracy": float(correct[answered].mean()) if answered.any() else None,
            }
        )
    return rows


def roc_curves(labels: np.ndarray, probs: np.ndarray) -> dict[int, Curve]:
    """One-vs-rest ROC curve of each class that has both positives and negatives."""
    from sklearn.metrics import auc, roc_curve

    curves = {}
    for c in _scorable(labels, probs.shape[1]):
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
        curves[c] = Curve(fpr, tpr, float(auc(fpr, tpr)))
    return curves


def pr_curves(labels: np.ndarray, probs: np.ndarray) -> dict[int, Curve]:
    """One-vs-rest precision-recall curve (x recall, y precision) and AP of each scorable class."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = {}
    for c in _scorable(labels, probs.shape[1]):
        precision, recall, _ = precision_recall_curve(labels == c, probs[:, c])
        curves[c] = Curve(recall, precision, float(average_precision_score(labels == c, probs[:, c])))
    return curves


def _scorable(labels: np.ndarray, num_classes: int) -> list[int]:
    """Classes with at least one positive and one negative sample: the only ones with a curve."""
    counts = np.bincount(labels, minlength=num_classes)
    return [c for c in range(num_classes) if 0 < counts[c] < len(labels)]


def _per_class_areas(labels: np.ndarray, probs: np.ndarray) -> tuple[dict[int, float], dict[int, float]]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    classes = _scorable(labels, probs.shape[1])
    auc = {c: float(roc_auc_score(labels == c, probs[:, c])) for c in classes}
    ap = {c: float(average_precision_score(labels == c, probs[:, c])) for c in classes}
    return auc, ap


def _macro_auc(auc: dict[int, float], num_classes: int) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present; None with fewer than two present.
    With two classes both one-vs-rest curves are the same curve: the positive class's AUC."""
    if not auc:
        return None
    return auc[1] if num_classes == 2 else float(np.mean(list(auc.values())))


def binary_counts(matrix: np.ndarray, classes) -> dict | None:
    """TP/FP/FN/TN with the second class as the positive one, for two-class tasks."""
    if len(classes) != 2:
        return None
    (tn, fp), (fn, tp) = np.asarray(matrix).tolist()
    return {"positive": classes[1], "negative": classes[0], "tp": tp, "fp": fp, "fn": fn, "tn": tn}


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
    # With 5 classes or fewer every true label is in the top 5: a top-5 accuracy of 1.0 says nothing.
    top5 = float(top_k_accuracy_score(labels, probs, k=5, labels=all_labels)) if n_classes > 5 else None
    matrix = confusion_matrix(labels, predicted, labels=all_labels)
    auc, ap = _per_class_areas(labels, probs)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "top5_accuracy": top5,
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "roc_auc_macro": _macro_auc(auc, n_classes),
        "average_precision_macro": float(np.mean(list(ap.values()))) if ap else None,
        "log_loss": float(log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=all_labels)),
        "ece": expected_calibration_error(labels, probs),
        "num_samples": int(len(labels)),
        "classes": list(classes),
        "confusion_matrix": matrix.tolist(),
        "binary": binary_counts(matrix, classes),
        "selective": selective_table(labels, probs),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(matrix[:, i].sum()),
                "roc_auc": auc.get(i),
                "average_precision": ap.get(i),
            }
            for i, name in enumerate(classes)
        },
        "skipped_files": list(skipped_files or []),
    }


# ---------------------------------------------------------------- multi-label

# Global thresholds tried for classes whose own threshold cannot be chosen (no positives in val).
THRESHOLD_GRID = np.round(np.linspace(0.05, 0.95, 19), 2)


def choose_thresholds(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per class, the probability threshold with the best F1 on these (validation) targets; and
    the global threshold with the best micro-F1, used for classes with no positives here."""
    from sklearn.metrics import f1_score, precision_recall_curve

    targets = np.asarray(targets) > 0.5
    scores = [f1_score(targets, probs >= t, average="micro", zero_division=0) for t in THRESHOLD_GRID]
    fallback = float(THRESHOLD_GRID[int(np.argmax(scores))])
    thresholds = np.full(targets.shape[1], fallback)
    for k in range(targets.shape[1]):
        if not targets[:, k].any() or targets[:, k].all():
            continue
        precision, recall, cut = precision_recall_curve(targets[:, k], probs[:, k])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds[k] = float(cut[int(np.argmax(f1))])
    return thresholds, fallback


def mean_average_precision(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro AP over the classes with at least one positive (the usual multi-label mAP)."""
    from sklearn.metrics import average_precision_score

    targets = np.asarray(targets) > 0.5
    present = [k for k in range(targets.shape[1]) if targets[:, k].any()]
    if not present:
        return None
    return float(np.mean([average_precision_score(targets[:, k], probs[:, k]) for k in present]))


def multilabel_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    classes: list[str] | tuple[str, ...],
    thresholds: np.ndarray,
    threshold: float,
    skipped_files: list[dict] | None = None,
) -> dict:
    """metrics.json of a multi-label task: targets (N, K) 0/1, probs (N, K) independent sigmoids."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    truth = np.asarray(targets) > 0.5
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    chosen = probs >= thresholds[None, :]
    precision, recall, f1, support = precision_recall_fscore_support(truth, chosen, zero_division=0)
    return {
        "task": "multi-label",
        "mAP": mean_average_precision(truth, probs),
        "micro_f1": float(f1_score(truth, chosen, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, chosen, average="macro", zero_division=0)),
        "hamming_loss": float(hamming_loss(truth, chosen)),
        "subset_accuracy": float(accuracy_score(truth, chosen)),
        "threshold": float(threshold),
        "num_samples": int(len(truth)),
        "classes": list(classes),
        "per_class": {
            name: {
                "average_precision": float(average_precision_score(truth[:, k], probs[:, k]))
                if truth[:, k].any()
                else None,
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "threshold": float(thresholds[k]),
            }
            for k, name in enumerate(classes)
        },
        "skipped_files": list(skipped_files or []),
    }


def multilabel_pr_curves(targets: np.ndarray, probs: np.ndarray) -> dict[int, Curve]:
    """Precision-recall curve (x recall, y precision) and AP of each class with a positive."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    truth = np.asarray(targets) > 0.5
    curves = {}
    for k in range(truth.shape[1]):
        if truth[:, k].any():
            precision, recall, _ = precision_recall_curve(truth[:, k], probs[:, k])
            curves[k] = Curve(recall, precision, float(average_precision_score(truth[:, k], probs[:, k])))
    return curves
