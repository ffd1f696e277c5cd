"""Path traversal (issue 19, item 3): class names that would leave `predict --copy-to`, manifest
labels that are paths, and `data apply` plans that name files outside their dataset.

The hostile checkpoints are rewritten with a fresh checksum, as an attacker would: the
SHA-256 in the metadata detects accidents, not intent."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.data.manifest import read_manifest
from imgcls.errors import DataError
from imgcls.inference.predictor import Prediction, PredictionSinks
from tests.helpers import make_class_folders

HOSTILE_NAMES = ["../../x", "/tmp/abs", "..", ".", "a\\..\\..\\b", "nul\0byte", "line\nbreak", "\x1b[31mred"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("paths")
    data = make_class_folders(root / "data", per_class=6, junk=False)
    run = root / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "softmax"]
    assert main(args) == 0
    return run / "best.safetensors", data


def _with_classes(source: Path, target: Path, classes) -> Path:
    tensors, meta = ckpt.load_checkpoint(source)
    meta = {k: v for k, v in meta.items() if k not in ("schema", "imgcls_version", ckpt.DIGEST_KEY)}
    meta["classes"] = classes
    ckpt.save_checkpoint(target, tensors, meta)  # a valid checksum over the hostile metadata
    return target


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", HOSTILE_NAMES)
def test_predict_copy_to_with_a_hostile_class_name_writes_nothing_outside(trained, tmp_path, capsys, bad):
    checkpoint, data = trained
    hostile = _with_classes(checkpoint, tmp_path / "hostile.safetensors", [bad, bad + "2", bad + "3"])
    box = tmp_path / "deep" / "er" / "sorted"
    before = _files(tmp_path)
    code = main(["-q", "predict", str(hostile), str(data), "--copy-to", str(box)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "class name" in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before  # nothing written anywhere, inside --copy-to or outside it


@pytest.mark.parametrize("classes", ["cat", {"a": 1}, None, [1, 2], []])
def test_class_names_of_the_wrong_type_are_refused_at_load(trained, tmp_path, classes):
    hostile = _with_classes(trained[0], tmp_path / "typed.safetensors", classes)
    with pytest.raises(ckpt.CheckpointError, match="class"):
        ckpt.read_metadata(hostile)


def test_the_copy_sink_checks_every_path_it_writes(tmp_path):
    """Defence in depth: a label that reached the sink unchecked still cannot leave --copy-to."""
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    box = tmp_path / "box"
    with PredictionSinks(None, str(box), topk=1) as sinks, pytest.raises(DataError, match="outside"):
        sinks.add(Prediction("a.png", (("../escaped", 1.0),)), image)
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("bad", ["../../x", "/etc", "a/b", "..", "tab\there"])
def test_a_manifest_label_that_is_not_a_safe_folder_name_is_refused(tmp_path, bad):
    rows = [{"path": "a.png", "labels": ["cat"]}, {"path": "b.png", "labels": [bad]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match="line 2"):
        read_manifest(manifest)


def _plan(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["action", "path", "target", "root", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_fix_plan_cannot_move_files_of_an_unrelated_folder(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3, junk=False)
    unrelated = tmp_path / "home"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("precious")
    (unrelated / "photo.png").write_bytes(b"precious")
    plan = _plan(
        tmp_path / "plan.csv",
        [
            {"action": "drop", "path": "bird/000.png", "target": "", "root": str(data), "reason": "dup"},
            {"action": "drop", "path": "photo.png", "target": "", "root": str(unrelated), "reason": "x"},
        ],
    )
    assert main(["-q", "data", "apply", str(plan)]) == 2
    assert "root" in capsys.readouterr().err
    assert (unrelated / "photo.png").exists() and (data / "bird" / "000.png").exists()
    only_other = _plan(
        tmp_path / "other.csv",
        [{"action": "drop", "path": "notes.txt", "target": "", "root": str(unrelated), "reason": "x"}],
    )
    assert main(["-q", "data", "apply", str(only_other)]) == 2  # not an image: not the doctor's to move
    assert (unrelated / "notes.txt").read_text() == "precious"
