"""metrics.json numbers, checked against scikit-learn called directly on the same inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from imgcls.metrics import (
    classification_metrics,
    coverage_curve,
    expected_calibration_error,
    pr_curves,
    reliability_bins,
    roc_curves,
    selective_table,
)

CONTRACT_KEYS = {
    "accuracy",
    "top5_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "roc_auc_macro",
    "log_loss",
    "ece",
    "num_samples",
    "classes",
    "confusion_matrix",
    "per_class",
    "skipped_files",
}
ADDED_KEYS = {"average_precision_macro", "binary", "selective"}


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


@pytest.mark.parametrize("num_classes", [6, 5, 3, 2])
def test_metrics_match_sklearn(num_classes):
    labels, probs = random_case(num_classes, seed=num_classes)
    classes = [f"class {i}" for i in range(num_classes)]
    m = classification_metrics(labels, probs, classes)
    predicted = probs.argmax(axis=1)

    assert set(m) == CONTRACT_KEYS | ADDED_KEYS
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert 0.2 < m["accuracy"] < 1.0  # the case is not degenerate
    if num_classes > 5:  # with 5 classes or fewer top-5 is always 1.0: not reported
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
        assert m["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(labels == i, probs[:, i]))
        assert m["per_class"][name]["average_precision"] == pytest.approx(
            average_precision_score(labels == i, probs[:, i])
        )
    expected_ap = np.mean([average_precision_score(labels == i, probs[:, i]) for i in range(num_classes)])
    assert m["average_precision_macro"] == pytest.approx(expected_ap)
    assert (m["binary"] is not None) == (num_classes == 2)
    assert sum(c["support"] for c in m["per_class"].values()) == m["num_samples"]
    json.loads(json.dumps(m, allow_nan=False))  # strict JSON: no NaN or numpy types


def test_confusion_matrix_rows_are_true_labels():
    labels = np.array([0, 0, 0, 1])
    probs = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.4, 0.6]])  # predicted 1, 1, 0, 1
    m = classification_metrics(labels, probs, ["cat", "dog"])
    assert m["confusion_matrix"] == [[1, 2], [0, 1]]
    cat = {k: m["per_class"]["cat"][k] for k in ("precision", "recall", "f1", "support", "predicted")}
    assert cat == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5, "support": 3, "predicted": 1}
    assert m["binary"] == {"positive": "dog", "negative": "cat", "tp": 1, "fp": 2, "fn": 0, "tn": 1}
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


def test_class_never_predicted_has_defined_zero_precision():
    labels = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.9, 0.05, 0.05]]
    )
    m = classification_metrics(labels, probs, ["a", "b", "c"])  # class c is never predicted
    c = m["per_class"]["c"]
    assert c["predicted"] == 0 and c["precision"] == 0.0 and c["recall"] == 0.0 and c["f1"] == 0.0
    assert m["per_class"]["c"]["support"] == 2
    json.loads(json.dumps(m, allow_nan=False))


def test_perfectly_separated_data():
    labels = np.repeat(np.arange(4), 5)
    probs = np.full((20, 4), 0.02)
    probs[np.arange(20), labels] = 0.94
    m = classification_metrics(labels, probs, list("abcd"))
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["roc_auc_macro"] == 1.0 and m["average_precision_macro"] == 1.0
    assert m["ece"] == pytest.approx(0.06)  # always right at confidence 0.94
    assert all(row["accuracy"] in (None, 1.0) for row in m["selective"])
    assert all(curve.area == 1.0 for curve in roc_curves(labels, probs).values())


def test_curves_match_the_areas_in_metrics():
    labels, probs = random_case(5, n=300, seed=3)
    m = classification_metrics(labels, probs, list("abcde"))
    roc, pr = roc_curves(labels, probs), pr_curves(labels, probs)
    for i, name in enumerate("abcde"):
        assert roc[i].area == pytest.approx(m["per_class"][name]["roc_auc"])
        assert pr[i].area == pytest.approx(m["per_class"][name]["average_precision"])
        assert roc[i].x[0] == 0.0 and roc[i].x[-1] == 1.0 and np.all(np.diff(roc[i].x) >= 0)
    assert np.mean([c.area for c in roc.values()]) == pytest.approx(m["roc_auc_macro"])


def test_curves_leave_out_a_class_without_positives():
    labels, probs = random_case(4, seed=5)
    labels[labels == 3] = 0
    assert sorted(roc_curves(labels, probs)) == [0, 1, 2]
    assert sorted(pr_curves(labels, probs)) == [0, 1, 2]


def test_coverage_curve_by_hand():
    # Confidences 0.9 (right), 0.8 (wrong), 0.8 (right), 0.6 (wrong).
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.4, 0.6]])
    threshold, coverage, accuracy = coverage_curve(labels, probs)
    assert threshold.tolist() == [0.9, 0.8, 0.6]
    assert coverage.tolist() == [0.25, 0.75, 1.0]
    assert accuracy.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    rows = {r["threshold"]: r for r in selective_table(labels, probs)}
    assert rows[0.7] == {"threshold": 0.7, "coverage": 0.75, "accuracy": pytest.approx(2 / 3)}
    assert rows[0.95] == {"threshold": 0.95, "coverage": 0.0, "accuracy": None}


def test_reliability_bins_count_every_sample():
    labels, probs = random_case(3, n=200, seed=7)
    bins = reliability_bins(labels, probs)
    assert sum(b["count"] for b in bins) == 200
    for b in bins:
        if b["count"]:
            assert b["low"] <= b["confidence"] <= b["high"]
