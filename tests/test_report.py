"""The HTML report: self-contained, escaped, and right about the most confused pair."""

from __future__ import annotations

import base64
import re

import pytest

from imgcls.report import write_report

PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def make_metrics(classes: list[str], matrix: list[list[int]]) -> dict:
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(classes)))
    per_class = {}
    for i, name in enumerate(classes):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = matrix[i][i] / predicted if predicted else 0.0
        recall = matrix[i][i] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": correct / total,
        "top5_accuracy": None if len(classes) <= 5 else 0.99,
        "macro_precision": sum(m["precision"] for m in per_class.values()) / len(classes),
        "macro_recall": sum(m["recall"] for m in per_class.values()) / len(classes),
        "macro_f1": sum(m["f1"] for m in per_class.values()) / len(classes),
        "roc_auc_macro": None,
        "log_loss": 0.42,
        "ece": 0.03,
        "num_samples": total,
        "classes": classes,
        "confusion_matrix": matrix,
        "per_class": per_class,
        "skipped_files": [{"path": "bad/<x>.jpg", "reason": "not an image & truncated"}],
    }


HISTORY = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "train_acc": 0.5 + 0.1 * e,
        "val_loss": 1.1 / e,
        "val_acc": 0.45 + 0.1 * e,
        "lr": 0.1 / e,
        "seconds": 2.5,
    }
    for e in range(1, 4)
]
CLASSES3 = ["cat", "<b>&", "dog"]
# Largest off-diagonal cell: true "dog" predicted as "<b>&" (7 times).
MATRIX3 = [[10, 2, 1], [3, 8, 0], [0, 7, 5]]


@pytest.fixture(scope="module")
def report3(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("r3") / "report.html"
    summary = {"model": "lenet", "data": "/data/<pets>", "train images": 120, "seconds": 3.25}
    out = write_report(path, metrics=make_metrics(CLASSES3, MATRIX3), history=HISTORY, summary=summary)
    assert out == path
    return path.read_text(encoding="utf-8")


def test_class_names_and_user_strings_are_escaped(report3):
    assert "&lt;b&gt;&amp;" in report3
    assert "<b>&" not in report3
    assert "/data/&lt;pets&gt;" in report3
    assert "bad/&lt;x&gt;.jpg" in report3 and "not an image &amp; truncated" in report3


def test_report_is_self_contained_with_images(report3):
    assert len(PNG_URI.findall(report3)) >= 3
    assert "http://" not in report3 and "https://" not in report3
    assert "Training curves" in report3


def test_embedded_image_is_png(report3):
    data = base64.b64decode(PNG_URI.search(report3).group(1))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_most_confused_pair_is_named(report3):
    look = re.search(r'<p class="look">(.*?)</p>', report3).group(1)
    assert "<strong>dog</strong> predicted as <strong>&lt;b&gt;&amp;</strong> (7 times)" in look
    pairs = re.search(r"<h2>Most confused pairs</h2>\s*<ol>(.*?)</ol>", report3).group(1)
    assert re.findall(r"<li>(.*?)</li>", pairs) == [
        "dog predicted as &lt;b&gt;&amp;: 7 times",
        "&lt;b&gt;&amp; predicted as cat: 3 times",
        "cat predicted as &lt;b&gt;&amp;: 2 times",
        "cat predicted as dog: 1 time",
    ]


def test_per_class_table_worst_f1_first(report3):
    table = report3.split("Worst F1 first")[1]
    # f1: cat 0.769, <b>& 0.571, dog 0.5 -> dog, <b>&, cat
    assert table.index("dog") < table.index("&lt;b&gt;&amp;") < table.index("cat")


def test_without_history_has_no_curves_and_says_no_errors(tmp_path):
    metrics = make_metrics(["a", "b"], [[4, 0], [0, 6]])
    metrics["skipped_files"] = []
    path = write_report(tmp_path / "sub" / "report.html", metrics=metrics, history=None)
    text = path.read_text(encoding="utf-8")
    assert "Training curves" not in text
    assert "No mistakes" in text
    assert len(PNG_URI.findall(text)) == 2
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


@pytest.mark.slow
def test_forty_classes_and_unicode_names(tmp_path):
    classes = ["猫", "犬", "$x$ math", "a" * 60] + [f"class {i}" for i in range(36)]
    n = len(classes)
    matrix = [[20 if i == j else (i + j) % 3 for j in range(n)] for i in range(n)]
    with_history = write_report(tmp_path / "r.html", metrics=make_metrics(classes, matrix), history=HISTORY[:1])
    text = with_history.read_text(encoding="utf-8")
    assert "猫" in text and "$x$ math" in text
    assert "99.00%" in text  # top-5 shown with 5+ classes
    # curves, two full matrices, and the zoom on the classes with the most mistakes
    assert len(PNG_URI.findall(text)) == 4
    assert "classes involved in the most mistakes" in text


def test_overwrites_existing_report(tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old", encoding="utf-8")
    write_report(path, metrics=make_metrics(["x", "y"], [[1, 1], [0, 2]]))
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
