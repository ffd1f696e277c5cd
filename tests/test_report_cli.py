"""Evaluation end to end on real data (scikit-learn's digits): metrics.json agrees with what
`imgcls predict --json` gives on the same images, --tta reports its effect, and `imgcls report`
and `imgcls compare` work from the files a run leaves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, log_loss, roc_auc_score

from imgcls.cli.main import main

pytestmark = pytest.mark.slow  # whole training runs, evaluations and reports: 15-30 s each


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    assert main(["-q", "data", "get", "digits", "--out", str(root / "data")]) == 0
    run = root / "run"
    args = [
        "-q",
        "train",
        str(root / "data" / "train"),
        "--out",
        str(run),
        "--model",
        "keras-cnn",
        "--img-size",
        "16",
        "--epochs",
        "8",
        "--batch-size",
        "32",
        "--set",
        "augment.hflip=false",
    ]
    assert main(args) == 0
    return root / "data", run


def test_metrics_agree_with_predict_json(digits_run, tmp_path, capsys):
    data, run = digits_run
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(data), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    test = data / "test"
    assert (
        main(
            ["-q", "predict", str(run / "best.safetensors"), str(test), "--json", "--topk", "10", "--runtime", "torch"]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classes = metrics["classes"]
    labels = np.array([classes.index(Path(r["path"]).parent.name) for r in rows])
    probs = np.zeros((len(rows), len(classes)))
    for i, r in enumerate(rows):
        for p in r["predictions"]:
            probs[i, classes.index(p["label"])] = p["score"]
    predicted = probs.argmax(1)
    assert metrics["num_samples"] == len(rows) == 360
    assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()), abs=1e-12)
    assert metrics["accuracy"] > 0.8  # a real model on real data, not a degenerate case
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predicted).tolist()
    assert metrics["log_loss"] == pytest.approx(log_loss(labels, probs), rel=1e-5)
    assert metrics["roc_auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), rel=1e-5)
    for i, name in enumerate(classes):
        assert metrics["per_class"][name]["support"] == int((labels == i).sum())
    text = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert f"{100 * metrics['accuracy']:.2f}%" in text  # the headline is the metrics.json number


def test_tta_reports_its_effect(digits_run, tmp_path, capsys):
    data, run = digits_run
    out = tmp_path / "tta"
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(data), "--out", str(out), "--tta"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    tta = metrics["tta"]
    assert tta["accuracy_with"] == metrics["accuracy"]
    assert 0 < tta["accuracy_without"] <= 1 and tta["accuracy_with"] != tta["accuracy_without"]
    assert "flip test-time augmentation" in printed
    assert "flip TTA effect" in (out / "report.html").read_text(encoding="utf-8")


def test_run_folder_has_what_the_report_needs(digits_run):
    _, run = digits_run
    for name in ("metrics.json", "summary.json", "predictions.npz", "history.csv", "report.html"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert sum(summary["train_counts"].values()) == summary["train images"]
    text = (run / "report.html").read_text(encoding="utf-8")
    for section in (
        "summary",
        "curves",
        "confusion",
        "per-class",
        "roc",
        "pr",
        "calibration",
        "coverage",
        "mistakes",
        "confident",
        "explanations",
    ):
        assert f'<section id="{section}">' in text, section
    assert 'alt="Grad-CAM"' in text
    assert "keras-cnn" in text and "adamw lr" in text  # model and recipe in the summary


def test_report_command_draws_the_same_sections_again(digits_run, tmp_path, capsys):
    _, run = digits_run
    out = tmp_path / "again.html"
    assert main(["-q", "report", str(run), "--out", str(out)]) == 0
    first = (run / "report.html").read_text(encoding="utf-8")
    again = out.read_text(encoding="utf-8")
    sections = lambda text: [s.split('"')[0] for s in text.split('<section id="')[1:]]  # noqa: E731
    assert sections(again) == sections(first)


def test_compare_runs(digits_run, tmp_path, capsys):
    _, run = digits_run
    assert (
        main(["-q", "evaluate", str(run / "best.safetensors"), str(run.parent / "data"), "--out", str(tmp_path / "ev")])
        == 0
    )
    capsys.readouterr()
    table = tmp_path / "runs.csv"
    assert main(["-q", "compare", str(run), str(tmp_path / "ev"), "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and str(run) in printed
    with table.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [str(run), str(tmp_path / "ev")]
    assert rows[0]["model"] == "keras-cnn" and rows[0]["epochs"] == "8"
    assert main(["-q", "compare", str(run), "--out", str(tmp_path / "runs.html")]) == 0
    assert "<table>" in (tmp_path / "runs.html").read_text(encoding="utf-8")


def test_report_of_a_folder_without_metrics_is_refused(tmp_path, capsys):
    assert main(["-q", "report", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
