"""End to end through the command line, in-process: train -> evaluate -> predict, errors, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imgcls.cli.main import main
from imgcls.config import load_config

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
FAST = ["--img-size", "32", "--batch-size", "16", "--set", "train.eval_batch_size=64"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["-q", "train", str(data), "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from tests.helpers import make_class_folders

    data = make_class_folders(tmp_path_factory.mktemp("cli") / "data", per_class=24)
    run = data.parent / "run"
    # the default recipe's network (with no model named, imgcls would choose one from the data)
    assert _train(data, run, "--epochs", "2", "--model", "keras-cnn") == 0
    return data, run


def test_train_writes_the_run_directory(trained):
    data, run = trained
    for name in ("config.yaml", "history.csv", "best.safetensors", "last.safetensors", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert CONTRACT_KEYS <= metrics.keys()
    assert set(metrics["classes"]) == {"猫", "狗 dog", "bird"}
    skipped = {Path(item["path"]).name for item in metrics["skipped_files"]}
    assert skipped == {"broken.png", "empty.jpg"}  # notes.txt and .DS_Store are not images
    assert all(item["reason"] for item in metrics["skipped_files"])
    assert metrics["accuracy"] > 0.9  # three well-separated colours
    rows = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    config = load_config(run / "config.yaml")
    assert config.train.epochs == 2 and config.data.img_size == 32 and config.data.train == str(data)


def test_evaluate_json_on_a_class_folder_root(trained, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert CONTRACT_KEYS <= metrics.keys()
    assert metrics["num_samples"] == 3 * 24  # every readable image of the root
    assert len(metrics["skipped_files"]) == 2


@pytest.mark.slow
def test_evaluate_uses_test_folder_and_writes_report(trained, split_root, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(split_root), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data"] == str(split_root / "test")
    assert metrics["num_samples"] == 3 * 8
    assert (out / "report.html").stat().st_size > 1000


def test_predict_json_lines_with_a_bad_file(trained, tmp_path, capsys):
    data, run = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    capsys.readouterr()
    status = main(
        ["-q", "predict", str(run / "best.safetensors"), str(data / "bird"), str(bad), "--json", "--topk", "2"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1  # some file failed, the others were still predicted
    assert len(lines) == 24 + 1
    good = [line for line in lines if "predictions" in line]
    assert len(good) == 24
    for line in good:
        scores = [p["score"] for p in line["predictions"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert line["path"].startswith(str(data / "bird"))
    assert sum(line["predictions"][0]["label"] == "bird" for line in good) >= 22
    errors = [line for line in lines if "error" in line]
    assert errors == [{"path": str(bad), "error": errors[0]["error"]}] and "not an image" in errors[0]["error"]


def test_predict_text_and_glob(trained, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["-q", "predict", str(run / "best.safetensors"), str(data / "猫" / "00*.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.startswith(str(data / "猫")) and "%" in line for line in out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet19"], "resnet18"),
        (["--recipe", "no-such-recipe"], "unknown recipe"),
        (["--set", "train.epoch=3"], "Did you mean 'epochs'"),
    ],
)
def test_bad_options_fail_before_training(class_folders, tmp_path, capsys, args, message):
    assert _train(class_folders, tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_bad_data_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "only" / "cats").mkdir(parents=True)
    assert _train(tmp_path / "only", tmp_path / "run") == 2
    assert "at least two class folders" in capsys.readouterr().err
    assert _train(tmp_path / "missing", tmp_path / "run") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(class_folders, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed ends exactly as an uninterrupted run."""
    import imgcls.training.fit as train_module

    straight = tmp_path / "straight"
    assert _train(class_folders, straight, "--epochs", "3", "--model", "lenet") == 0

    real_epoch = train_module.supervised_epoch
    calls = {"n": 0}

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stands in for a kill between two checkpoints
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "supervised_epoch", dies_in_epoch_two)
    interrupted = tmp_path / "interrupted"
    assert _train(class_folders, interrupted, "--epochs", "3", "--model", "lenet") == 130
    assert (interrupted / "last.safetensors").is_file() and not (interrupted / "metrics.json").exists()
    monkeypatch.setattr(train_module, "supervised_epoch", real_epoch)
    assert main(["-q", "train", "--resume", "--out", str(interrupted)]) == 0

    expected = json.loads((straight / "metrics.json").read_text(encoding="utf-8"))
    resumed = json.loads((interrupted / "metrics.json").read_text(encoding="utf-8"))
    assert resumed == expected
    assert (interrupted / "history.csv").read_text().count("\n") == 4


def test_a_finished_run_is_not_overwritten(trained, capsys):
    data, run = trained
    assert _train(data, run, "--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err


def test_models_lists_names_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "keras-cnn" in out and "resnet18" in out
    assert main(["models", "mobilenetv3_small*"]) == 0
    assert "mobilenetv3_small_100" in capsys.readouterr().out


@pytest.mark.slow
def test_data_get_digits(tmp_path, capsys):
    assert main(["-q", "data", "get", "digits", "--out", str(tmp_path / "digits")]) == 0
    assert "1,437" in capsys.readouterr().out
    assert len(list((tmp_path / "digits" / "test").rglob("*.png"))) == 360
