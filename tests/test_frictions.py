"""Small frictions, each pinned: CLIP runs print each log line once; --sync-bn on a CPU is
refused before torchrun starts; top-5 only above 5 classes; a train/test conflict keeps the
test image; the recipe table promises only what the recipes set."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.cli.main import main
from imgcls.config import build_config, list_recipes, read_recipe
from imgcls.doctor.fix import plan_actions
from imgcls.metrics import classification_metrics
from tests.helpers import make_class_folders

ROOT = Path(__file__).parent.parent

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow
def test_clip_training_prints_each_log_line_once(tmp_path, capsys, monkeypatch):
    """open_clip logs through the root logger with logging.info(), which makes Python add a root
    handler when there is none; imgcls's lines then printed a second time. As in a real process,
    the root starts without handlers here (pytest's own are set aside)."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    weights = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("tiny-clip").state_dict().items()}, str(weights))
    data = make_class_folders(tmp_path / "data", per_class=4, junk=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    argv = ["train", str(data), "--model", f"clip:{config}", "--clip-weights", str(weights), "--epochs", "1"]
    assert main([*argv, "--img-size", "32", "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any(line.startswith("imgcls: epoch 1/1") for line in lines)
    assert not [line for line in lines if "epoch 1/1" in line and not line.startswith("imgcls: ")]
    assert len(lines) == len(set(lines)), lines


def test_root_warnings_of_libraries_still_show_once(capsys, monkeypatch):
    import imgcls.cli.main as cli

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    handler = cli._root_handler()
    try:
        logging.info("library chatter")  # below WARNING: not shown, and no basicConfig handler added
        logging.getLogger("somelib").warning("library warning")
        logging.getLogger("imgcls.x").warning("imgcls's own line, printed by imgcls's handler only")
        assert logging.getLogger().handlers == [handler]
    finally:
        logging.getLogger().removeHandler(handler)
    assert capsys.readouterr().err.splitlines() == ["somelib: WARNING: library warning"]


def test_sync_bn_on_cpu_is_refused_before_torchrun_in_one_line(tmp_path, capsys, monkeypatch):
    import imgcls.training.distributed as distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda *a: launched.append(a) or 0)
    data = make_class_folders(tmp_path / "data", per_class=2, junk=False)
    start = time.perf_counter()
    code = main(["train", str(data), "--devices", "2", "--sync-bn", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and launched == []
    assert err.splitlines() == [
        "imgcls: error: train.sync_bn: PyTorch's SyncBatchNorm works on CUDA only; leave --sync-bn off on CPU."
    ]
    assert time.perf_counter() - start < 5  # nothing decoded
    assert not (tmp_path / "run").exists()
    # --set train.sync_bn=true is the same request; without --sync-bn the launch goes ahead.
    assert main(["train", str(data), "--devices", "2", "--set", "train.sync_bn=true", "--device", "cpu"]) == 2
    assert main(["train", str(data), "--devices", "2", "--out", str(tmp_path / "run")]) == 0 and len(launched) == 1


@pytest.mark.parametrize("num_classes, reported", [(5, False), (6, True)])
def test_top5_is_reported_only_above_five_classes(num_classes, reported):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(num_classes), 60)
    labels = np.arange(60) % num_classes
    m = classification_metrics(labels, probs, [f"c{i}" for i in range(num_classes)])
    assert (m["top5_accuracy"] is not None) == reported
    if reported:
        assert m["top5_accuracy"] < 1.0  # random scores: a true label is sometimes ranked sixth


def _item(root: Path, split: str, label: str, name: str) -> dict:
    return {"path": str(root / split / label / name), "split": split, "label": label}


def _report(root: Path, **findings) -> dict:
    base = {"unreadable": [], "conflicting_labels": [], "exact_duplicates": [], "near_duplicates": []}
    folders = {"train": str(root / "train"), "test": str(root / "test")}
    return {"data": str(root), "split_folders": folders, "label_errors": {"issues": []}, **base, **findings}


def test_train_test_conflict_drops_the_train_copy_and_keeps_the_test_image(tmp_path):
    train, test = _item(tmp_path, "train", "cat", "x.png"), _item(tmp_path, "test", "dog", "x.png")
    group = [train, test]
    rows = plan_actions(_report(tmp_path, conflicting_labels=[group], exact_duplicates=[group]))
    assert [(r["path"], r["action"], r["kind"]) for r in rows] == [("train/cat/x.png", "drop", "conflict")]
    assert "test/dog/x.png is kept" in rows[0]["reason"]
    # Near-identical images under two classes across train/test: the same rule.
    near = {"a": _item(tmp_path, "train", "cat", "y.png"), "b": _item(tmp_path, "test", "dog", "y.jpg")}
    rows = plan_actions(_report(tmp_path, near_duplicates=[near]))
    assert [(r["path"], r["action"]) for r in rows] == [("train/cat/y.png", "drop")]


def test_conflict_within_one_split_still_drops_every_copy(tmp_path):
    group = [_item(tmp_path, "train", "cat", "x.png"), _item(tmp_path, "train", "dog", "x.png")]
    rows = plan_actions(_report(tmp_path, conflicting_labels=[group], exact_duplicates=[group]))
    assert sorted(r["path"] for r in rows if r["action"] == "drop") == ["train/cat/x.png", "train/dog/x.png"]
    # Test copies that disagree among themselves cannot be kept either.
    group = [_item(tmp_path, "train", "cat", "z.png"), *(_item(tmp_path, "test", c, "z.png") for c in ("cat", "dog"))]
    rows = plan_actions(_report(tmp_path, conflicting_labels=[group], exact_duplicates=[group]))
    assert len([r for r in rows if r["action"] == "drop"]) == 3


def test_recipe_table_promises_only_what_the_recipes_set():
    table = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    rows = {
        name: text for name, text in re.findall(r"^\| `([\w-]+)` \| (.*) \|$", table, re.M) if name in list_recipes()
    }
    assert set(rows) == set(list_recipes())
    for name, text in rows.items():
        config = build_config(name, {})
        assert ("early stopping" in text and "no early stopping" not in text) == (config.train.early_stopping > 0), name
        epochs = re.search(r"(\d+) epochs", text)
        if epochs:
            assert int(epochs.group(1)) == read_recipe(name)["train"]["epochs"], name
