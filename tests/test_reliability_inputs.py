"""Bad input other than image bytes: file names that are not UTF-8, folders that cannot be
read or change while they are scanned, pickles posing as weights, and configs out of range.
Each is reported (DataError, CheckpointError, ConfigError or a skipped file), never a crash."""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.config import build_config, parse_overrides
from imgcls.data.cache import build_cache
from imgcls.data.resolve import resolve_training_data
from imgcls.data.sources import list_images
from imgcls.errors import CheckpointError, ConfigError, DataError
from imgcls.files import write_json
from imgcls.training.transfer import read_state_dict
from tests.helpers import make_class_folders

NOT_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: a surrogate-escaped str in Python


def _deny(path: Path, monkeypatch) -> None:
    """Make `path` unreadable: chmod 000 for a normal user; as root (who reads anything) the
    same failure, PermissionError from the system call, is injected into open and listing."""
    if os.geteuid() != 0:
        path.chmod(0)  # pytest's tmp_path clean-up restores permissions before removing
        return
    target = os.fspath(path)

    def guard(real):
        def call(p, *args, **kwargs):
            if not isinstance(p, int) and os.fspath(p) == target:
                raise PermissionError(13, os.strerror(13), target)
            return real(p, *args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(os, "open", guard(os.open))  # image files are read through os.open
    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))


@pytest.fixture
def data(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data", per_class=6, junk=False)


# --- file names and folders ------------------------------------------------------------------


def test_non_utf8_file_names_are_found_decoded_and_reported(data, tmp_path):
    good, bad = data / "bird" / NOT_UTF8, data / "bird" / os.fsdecode(b"broken-\xfe.png")
    shutil.copy(data / "bird" / "000.png", good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    sources = resolve_training_data(data, val_fraction=0.5)
    paths = {s.path for s in sources.train + sources.val}
    assert good in paths and bad in paths
    cache = build_cache(sources.train + sources.val, size=16)
    assert str(good) in cache.paths
    assert [item["path"] for item in cache.skipped] == [str(bad)]
    out = tmp_path / "skipped.json"
    write_json(out, {"skipped_files": cache.skipped})  # escaped, not a UnicodeEncodeError
    assert "broken-\\udcfe.png" in out.read_text(encoding="utf-8")


@pytest.mark.slow
def test_train_and_predict_with_a_non_utf8_class_folder(data, tmp_path, capsys):
    """The class of a folder named in Latin-1 bytes is called 'oiseau-%E9': printable in
    logs, JSON, plots and the report, and the same name when the folder is evaluated."""
    (data / "bird").rename(data / os.fsdecode(b"oiseau-\xe9"))
    run = tmp_path / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "softmax"]
    assert main(args) == 0
    meta = ckpt.read_metadata(run / "best.safetensors")
    assert "oiseau-%E9" in meta["classes"]
    image = next((data / os.fsdecode(b"oiseau-\xe9")).iterdir())
    capsys.readouterr()
    assert main(["predict", str(run / "best.safetensors"), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"]
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(data), "--json"]) == 0
    assert "oiseau-%E9" in json.loads(capsys.readouterr().out)["classes"]


def test_unreadable_image_is_skipped_with_its_reason(data, monkeypatch):
    locked = data / "bird" / "001.JPG"
    _deny(locked, monkeypatch)
    sources = resolve_training_data(data, val_fraction=0.5)
    cache = build_cache(sources.train + sources.val, size=16, workers=1)
    assert [item["path"] for item in cache.skipped] == [str(locked)]
    assert "Permission denied" in cache.skipped[0]["reason"]
    assert len(cache) == 3 * 6 - 1


def test_unreadable_sub_folder_is_skipped_with_a_warning(data, monkeypatch, caplog):
    nested = data / "bird" / "more"
    nested.mkdir()
    shutil.copy(data / "bird" / "000.png", nested / "x.png")
    _deny(nested, monkeypatch)
    with caplog.at_level(logging.WARNING):
        found = list_images(data / "bird")
    assert len(found) == 6 and nested / "x.png" not in found
    assert any("cannot list" in r.getMessage() and "more" in r.getMessage() for r in caplog.records)


def test_unreadable_data_folder_is_a_data_error(data, monkeypatch):
    _deny(data, monkeypatch)
    with pytest.raises(DataError, match=f"cannot list {data}.*Permission denied"):
        resolve_training_data(data)


def test_unreadable_class_folder_is_reported_as_empty(data, monkeypatch):
    _deny(data / "bird", monkeypatch)
    with pytest.raises(DataError, match="'bird'.*hold no images"):
        resolve_training_data(data)


def test_symlink_loops_and_self_links_end_the_scan(data):
    (data / "bird" / "loop").symlink_to(data / "bird")
    (data / "bird" / "self.png").symlink_to(data / "bird" / "self.png")  # ELOOP when opened
    (data / "bird" / "dangling.png").symlink_to(data / "nowhere.png")
    sources = resolve_training_data(data, val_fraction=0.5)
    cache = build_cache(sources.train + sources.val, size=16, workers=1)
    reasons = {Path(item["path"]).name: item["reason"] for item in cache.skipped}
    assert set(reasons) == {"self.png", "dangling.png"} and len(cache) == 18


def test_folder_changing_during_the_scan(data, monkeypatch, caplog):
    """A class folder deleted while another is walked, and files deleted or replaced between
    the scan and the decoding: the first is named in a warning, the others skipped with
    their reasons."""
    real_scandir = os.scandir

    def scandir_and_delete(path=".", *args):
        if not isinstance(path, int) and Path(path).name == "bird" and (data / "猫").exists():
            shutil.rmtree(data / "猫")  # gone after the listing of the root found it
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir_and_delete)
    with caplog.at_level(logging.WARNING):
        sources = resolve_training_data(data)
    assert sources.classes == ("bird", "狗 dog")
    assert any("disappeared" in r.getMessage() and "猫" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(os, "scandir", real_scandir)

    sources = resolve_training_data(data, val_fraction=0.5)
    vanished = sources.train[0].path
    vanished.unlink()
    replaced = sources.train[1].path
    replaced.unlink()
    replaced.mkdir()  # a folder where an image was
    cache = build_cache(sources.train + sources.val, size=16, workers=1)
    reasons = {item["path"]: item["reason"] for item in cache.skipped}
    assert set(reasons) == {str(vanished), str(replaced)}
    assert "No such file" in reasons[str(vanished)]


def test_a_healthy_folder_scans_without_warnings(data, caplog):
    with caplog.at_level(logging.WARNING):
        resolve_training_data(data)
    assert not caplog.records


# --- models: pickles are refused and never run -----------------------------------------------


class Payload:
    """Unpickling this writes a marker file: the proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture
def payload(tmp_path) -> Payload:
    Payload.marker = tmp_path / "ran"
    return Payload()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_renamed_safetensors_is_refused_and_never_runs(tmp_path, payload, writer):
    fake = tmp_path / "model.safetensors"
    if writer == "pickle":
        fake.write_bytes(pickle.dumps({"weight": payload}))
    else:
        torch.save({"weight": payload}, fake)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_checkpoint(fake)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_state_dict(fake)
    assert not Payload.marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pretrained_pickle_is_refused_by_the_cli_and_never_runs(data, tmp_path, payload, suffix, capsys):
    weights = tmp_path / f"x{suffix}"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1), "evil": payload}}, weights)
    status = main(
        [
            "-q",
            "train",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--img-size",
            "16",
            "--epochs",
            "1",
            "--model",
            "lenet",
            "--pretrained",
            str(weights),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert f"x{suffix}" in err and "pickled objects are refused" in err
    assert not Payload.marker.exists()


def test_raw_pickle_as_pretrained_pt_is_refused_and_never_runs(tmp_path, payload):
    weights = tmp_path / "x.pt"
    weights.write_bytes(pickle.dumps(payload))  # an old-style pickle, not torch's zip format
    with pytest.raises(CheckpointError, match="x.pt"):
        read_state_dict(weights)
    assert not Payload.marker.exists()


def test_predict_on_a_pickle_named_safetensors_is_a_clear_error(tmp_path, payload, capsys):
    fake = tmp_path / "best.safetensors"
    fake.write_bytes(pickle.dumps(payload))
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main(["predict", str(fake), str(image)]) == 2
    assert "best.safetensors" in capsys.readouterr().err
    assert not Payload.marker.exists()


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epochs=-3", "train.epochs must be at least 1"),
        ("train.batch_size=0", "train.batch_size must be at least 1"),
        ("optim.lr=0", "optim.lr must be positive"),
        ("optim.lr=-0.1", "optim.lr must be positive"),
        ("optim.lr=.nan", "optim.lr: expected a finite number"),
        ("optim.lr=inf", "optim.lr: expected a finite number"),
        ("train.seed=-1", "train.seed must be in"),
        ("data.img_size=0", "data.img_size must be between 8 and 4096"),
        ("train.epcohs=3", "Did you mean 'epochs'"),
        ("trian.epochs=3", "Did you mean 'train'"),
    ],
)
def test_bad_config_is_refused_before_any_data_is_read(override, words, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        build_config(overrides=parse_overrides([override]))
    import imgcls.training.fit

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(imgcls.training.fit, "fit", no_training)
    assert main(["-q", "train", str(tmp_path / "not-read"), "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert words in capsys.readouterr().err
