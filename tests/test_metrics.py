"""metrics.json numbers, checked against scikit-learn called directly on the same inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from imgcls.metrics import classification_metrics, expected_calibration_error

CONTRACT_KEYS = {
    "accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc_macro", "log_loss",
    "ece", "num_samples", "classes", "confusion_matrix", "per_class", "skipped_files",
}  # fmt: skip


def random_case(num_classes: int, n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering every class, and probabilities that lean towards the true class
    often enough that the metrics are neither trivial nor degenerate."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    rng.shuffle(labels)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += rng.uniform(0, 2.5, n)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def hand_confusion(labels, predicted, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    for t, p in zip(labels, predicted, strict=True):
        matrix[t, p] += 1
    return matrix


@pytest.mark.parametrize("num_classes", [6, 3, 2])
def test_metrics_match_sklearn(num_classes):
    labels, probs = random_case(num_classes, seed=num_classes)
    classes = [f"class {i}" for i in range(num_classes)]
    m = classification_metrics(labels, probs, classes)
    predicted = probs.argmax(axis=1)

    assert set(m) == CONTRACT_KEYS
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert 0.2 < m["accuracy"] < 1.0  # the case is not degenerate
    if num_classes >= 5:
        expected = top_k_accuracy_score(labels, probs, k=5, labels=np.arange(num_classes))
        assert m["top5_accuracy"] == pytest.approx(expected)
        assert m["top5_accuracy"] >= m["accuracy"]
    else:
        assert m["top5_accuracy"] is None

    p, r, f, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    assert m["macro_precision"] == pytest.approx(p)
    assert m["macro_recall"] == pytest.approx(r)
    assert m["macro_f1"] == pytest.approx(f)

    if num_classes == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["roc_auc_macro"] == pytest.approx(auc)
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs))

    assert m["num_samples"] == len(labels)
    assert m["classes"] == classes
    assert m["confusion_matrix"] == hand_confusion(labels, predicted, num_classes).tolist()
    per_p, per_r, per_f, per_s = precision_recall_fscore_support(labels, predicted, zero_division=0)
    for i, name in enumerate(classes):
        assert m["per_class"][name]["precision"] == pytest.approx(per_p[i])
        assert m["per_class"][name]["recall"] == pytest.approx(per_r[i])
        assert m["per_class"][name]["f1"] == pytest.approx(per_f[i])
        assert m["per_class"][name]["support"] == per_s[i] == np.sum(labels == i)
    assert sum(c["support"] for c in m["per_class"].values()) == m["num_samples"]
    json.loads(json.dumps(m, allow_nan=False))  # strict JSON: no NaN or numpy types


def test_confusion_matrix_rows_are_true_labels():
    labels = np.array([0, 0, 0, 1])
    probs = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.4, 0.6]])  # predicted 1, 1, 0, 1
    m = classification_metrics(labels, probs, ["cat", "dog"])
    assert m["confusion_matrix"] == [[1, 2], [0, 1]]
    assert m["per_class"]["cat"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5, "support": 3}
    assert m["per_class"]["dog"]["precision"] == pytest.approx(1 / 3)
    assert m["accuracy"] == 0.5


def test_class_absent_from_labels_does_not_crash():
    labels, probs = random_case(6, seed=1)
    keep = labels != 2
    labels, probs = labels[keep], probs[keep]
    classes = ["a", "b", "c", "d", "e", "f"]
    m = classification_metrics(labels, probs, classes, skipped_files=[{"path": "x.png", "reason": "truncated"}])
    assert m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["c"]["recall"] == 0.0
    assert m["confusion_matrix"][2] == [0] * 6
    assert len(m["confusion_matrix"]) == 6 and all(len(row) == 6 for row in m["confusion_matrix"])
    assert sum(c["support"] for c in m["per_class"].values()) == m["num_samples"] == len(labels)
    present = [c for c in range(6) if c != 2]
    expected_auc = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present])
    assert m["roc_auc_macro"] == pytest.approx(expected_auc)
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs, labels=np.arange(6)))
    assert m["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probs, k=5, labels=np.arange(6)))
    assert m["skipped_files"] == [{"path": "x.png", "reason": "truncated"}]
    json.loads(json.dumps(m, allow_nan=False))


def test_single_class_present_has_no_auc():
    labels = np.array([1, 1, 1])
    probs = np.array([[0.1, 0.9, 0.0], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["roc_auc_macro"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    json.loads(json.dumps(m, allow_nan=False))


def test_ece_is_zero_for_confident_correct_predictions():
    labels = np.array([0, 1, 2, 1, 0])
    probs = np.eye(3)[labels]
    assert expected_calibration_error(labels, probs) == pytest.approx(0.0, abs=1e-12)
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"] == 1.0


def test_ece_of_constant_confidence_is_accuracy_gap():
    # Every prediction is class 0 with confidence 0.7; 6 of 10 are right: ECE = |0.6 - 0.7|.
    labels = np.array([0] * 6 + [1] * 3 + [2])
    probs = np.tile([0.7, 0.2, 0.1], (10, 1))
    assert expected_calibration_error(labels, probs) == pytest.approx(0.1)


def test_ece_weights_bins_by_size():
    # Bin of confidence 0.9, all right (gap 0.1, weight 0.25); bin of 0.6, half right (gap 0.1, weight 0.75).
    high = np.tile([0.9, 0.1], (4, 1))
    low = np.tile([0.6, 0.4], (12, 1))
    probs = np.vstack([high, low])
    labels = np.array([0] * 4 + [0] * 6 + [1] * 6)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.25 * 0.1 + 0.75 * 0.1)
    # Overconfident in one bin, underconfident in another: gaps must not cancel.
    labels = np.array([1] * 4 + [0] * 12)  # high bin all wrong (gap 0.9), low bin all right (gap 0.4)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.25 * 0.9 + 0.75 * 0.4)
