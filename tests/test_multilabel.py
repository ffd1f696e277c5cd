"""Multi-label classification: manifests, losses, thresholds, metrics and the CLI end to end."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from imgcls.cli.main import main
from imgcls.data.manifest import is_multilabel, manifest_sources, read_manifest
from imgcls.errors import DataError
from imgcls.metrics import choose_thresholds, multilabel_metrics
from imgcls.training.losses import build_multilabel_loss, correct_predictions, positive_weights
from tests.helpers import COLOURS, mosaic, write_csv, write_png

# ---------------------------------------------------------------- manifests


def test_csv_manifest_with_quotes_unicode_and_negatives(tmp_path):
    for name in ("a.png", "b c.png", "d.png"):
        write_png(tmp_path / "img" / name)
    manifest = write_csv(
        tmp_path / "m.csv", [("img/a.png", "猫; dog"), ("img/b c.png", 'say "hi";cat'), ("img/d.png", "")]
    )
    rows = read_manifest(manifest)
    assert [r.labels for r in rows] == [("dog", "猫"), ("cat", 'say "hi"'), ()]
    assert rows[0].line == 2 and rows[2].line == 4
    assert is_multilabel(rows)


def test_jsonl_manifest_single_label(tmp_path):
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "x.png", "labels": ["bus"]}\n\n{"path": "y.png", "label": "car"}\n', encoding="utf-8")
    rows = read_manifest(manifest)
    assert [r.labels for r in rows] == [("bus",), ("car",)]
    assert not is_multilabel(rows)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_paths_leaving_the_manifest_folder_are_refused(tmp_path, bad):
    (tmp_path / "data").mkdir()
    write_png(tmp_path / "outside.png")
    manifest = write_csv(tmp_path / "data" / "m.csv", [(bad, "cat")])
    with pytest.raises(DataError, match="line 2.*outside the manifest's folder.*--allow-outside"):
        read_manifest(manifest)
    if not bad.startswith("/etc"):
        assert read_manifest(manifest, allow_outside=True)[0].path == (tmp_path / "outside.png")


def test_duplicates_and_missing_files(tmp_path, caplog):
    write_png(tmp_path / "a.png")
    manifest = write_csv(tmp_path / "m.csv", [("a.png", "cat"), ("./a.png", "cat"), ("gone.png", "dog")])
    with caplog.at_level(logging.WARNING):
        rows = read_manifest(manifest)
    assert len(rows) == 2  # the exact duplicate is dropped
    assert "line 3: duplicate of line 2" in caplog.text
    assert "line 4: gone.png" in caplog.text  # the missing file, with its line
    conflicting = write_csv(tmp_path / "c.csv", [("a.png", "cat"), ("a.png", "dog")])
    with pytest.raises(DataError, match="line 2 as \\['cat'\\] and on line 3 as \\['dog'\\]"):
        read_manifest(conflicting)


def test_manifest_errors_name_the_problem(tmp_path):
    (tmp_path / "h.csv").write_text("file,tags\nx.png,a\n", encoding="utf-8")
    with pytest.raises(DataError, match="'path' and 'labels'"):
        read_manifest(tmp_path / "h.csv")
    (tmp_path / "j.jsonl").write_text('{"path": "x.png", "labels": "a"}\n{"path": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_manifest(tmp_path / "j.jsonl")


def test_manifest_sources_split_and_multi_hot(tmp_path):
    rows = []
    for i in range(20):
        write_png(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", ["red", "red;blue", "", "blue"][i % 4]))
    sources = manifest_sources(write_csv(tmp_path / "m.csv", rows), None, val_fraction=0.25, seed=0)
    assert sources.task == "multi-label" and sources.classes == ("blue", "red")
    assert len(sources.train) + len(sources.val) == 20 and len(sources.val) >= 4
    by_path = {s.path.name: s.targets for s in sources.train + sources.val}
    assert by_path["1.png"] == (1, 1) and by_path["2.png"] == (0, 0) and by_path["3.png"] == (1, 0)


# ---------------------------------------------------------------- losses, thresholds, metrics


def test_positive_weights_and_losses():
    targets = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], np.float32)
    assert positive_weights(targets).tolist() == [3.0, 3.0]
    logits = torch.tensor([[3.0, -3.0], [-3.0, -3.0], [-3.0, 2.0], [-2.0, 3.0]])
    y = torch.from_numpy(targets)
    bce = build_multilabel_loss("bce", None)(logits, y)
    assert bce.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item())
    asl = build_multilabel_loss("asl", None)(logits, y)
    assert 0 < asl.item() < bce.item()  # ASL down-weights the easy negatives
    assert correct_predictions(logits, y) == 3  # row 3 has a false positive


def test_thresholds_maximise_f1_on_known_data():
    # Class 0: positives score 0.4-0.45, negatives 0.1-0.2 -> a threshold in (0.2, 0.4] separates them.
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]])
    probs = np.array([[0.45, 0.1], [0.4, 0.2], [0.2, 0.9], [0.1, 0.3], [0.15, 0.35]])
    thresholds, fallback = choose_thresholds(targets, probs)
    assert 0.2 < thresholds[0] <= 0.4
    assert 0.3 < thresholds[1] <= 0.35
    m = multilabel_metrics(targets, probs, ["a", "b"], thresholds, fallback)
    assert m["micro_f1"] == 1.0 and m["subset_accuracy"] == 1.0 and m["hamming_loss"] == 0.0


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 5)) < 0.3).astype(int)
    probs = np.clip(targets * 0.5 + rng.random((200, 5)) * 0.6, 0, 1)
    thresholds = np.full(5, 0.5)
    m = multilabel_metrics(targets, probs, list("abcde"), thresholds, 0.5)
    chosen = probs >= 0.5
    assert m["micro_f1"] == pytest.approx(f1_score(targets, chosen, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(targets, chosen, average="macro"))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(targets, chosen))
    assert m["subset_accuracy"] == pytest.approx(np.mean((chosen == targets.astype(bool)).all(1)))
    expected_map = np.mean([average_precision_score(targets[:, k], probs[:, k]) for k in range(5)])
    assert m["mAP"] == pytest.approx(expected_map)
    assert m["per_class"]["c"]["support"] == int(targets[:, 2].sum())
    json.loads(json.dumps(m, allow_nan=False))


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    rows = []
    for i in range(160):
        present = [n for n in names if rng.random() < 0.45]
        quadrants = [COLOURS[n] for n in present] + [None] * (4 - len(present))
        rng.shuffle(quadrants)
        path = root / "img" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(mosaic(quadrants, rng)).save(path)
        rows.append((f"img/{i:03d}.png", ";".join(present)))
    write_csv(root / "train.csv", rows[:120])
    write_csv(root / "val.csv", rows[120:])
    run = root / "run"
    args = [
        "-q",
        "train",
        str(root / "train.csv"),
        "--val",
        str(root / "val.csv"),
        "--out",
        str(run),
        "--model",
        "keras-cnn",
        "--img-size",
        "16",
        "--epochs",
        "12",
        "--batch-size",
        "16",
    ]
    assert main(args) == 0
    return root, run


def test_training_on_a_manifest(multilabel_run):
    _, run = multilabel_run
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "multi-label" and metrics["classes"] == ["blue", "green", "red"]
    assert metrics["mAP"] > 0.9  # colours in quadrants are easy: a real, not degenerate, model
    for key in ("micro_f1", "macro_f1", "hamming_loss", "subset_accuracy", "threshold", "per_class", "num_samples"):
        assert key in metrics
    from imgcls.checkpoint import read_metadata

    meta = read_metadata(run / "best.safetensors")
    assert meta["task"] == "multi-label"
    assert [round(t, 6) for t in meta["thresholds"]["per_class"]] == [
        round(metrics["per_class"][c]["threshold"], 6) for c in metrics["classes"]
    ]
    text = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="cooccurrence"' in text and 'id="pr"' in text and "mAP" in text


def test_predict_selects_labels_above_their_thresholds(multilabel_run, capsys):
    root, run = multilabel_run
    capsys.readouterr()
    images = sorted((root / "img").glob("*.png"))[120:130]
    assert main(["-q", "predict", str(run / "best.safetensors"), *map(str, images), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    meta_thresholds = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["per_class"]
    for row in rows:
        assert len(row["predictions"]) == 3  # every label with its score
        for p in row["predictions"]:
            assert p["selected"] == (p["score"] >= meta_thresholds[p["label"]]["threshold"])
    assert main(["-q", "predict", str(run / "best.safetensors"), str(images[0]), "--threshold", "1.0"]) == 0
    assert "no label above its threshold" in capsys.readouterr().out


def test_evaluate_and_export_keep_the_sigmoid(multilabel_run, tmp_path, capsys):
    root, run = multilabel_run
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(root / "val.csv"), "--out", str(tmp_path)]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    trained = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert evaluated["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert evaluated["micro_f1"] == pytest.approx(trained["micro_f1"], abs=1e-6)
    onnx_path = tmp_path / "m.onnx"
    assert main(["-q", "export", str(run / "best.safetensors"), "--out", str(onnx_path)]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", str(onnx_path), str(root / "val.csv"), "--json"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert from_onnx["mAP"] == pytest.approx(trained["mAP"], abs=1e-4)
    # The thresholds travel in the ONNX file's metadata: the same labels are selected.
    assert from_onnx["threshold"] == trained["threshold"]
    assert [c["threshold"] for c in from_onnx["per_class"].values()] == [
        c["threshold"] for c in trained["per_class"].values()
    ]


def test_server_answers_with_selected_labels(multilabel_run):
    from fastapi.testclient import TestClient

    from imgcls.serve.app import create_app

    root, run = multilabel_run
    image = sorted((root / "img").glob("*.png"))[125].read_bytes()
    with TestClient(create_app(run / "best.safetensors", runtime="torch")) as client:
        answer = client.post("/predict", content=image, headers={"content-type": "image/png"})
    assert answer.status_code == 200
    items = answer.json()["predictions"]
    assert len(items) == 3 and all(isinstance(item["selected"], bool) for item in items)
