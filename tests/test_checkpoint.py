"""Checkpoints: one safetensors file, weights + JSON metadata, atomic, never unpickled."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from imgcls.checkpoint import (
    MODEL_PREFIX,
    SCHEMA_VERSION,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_metadata,
    save_checkpoint,
    split_prefix,
)
from imgcls.config import OptimConfig
from imgcls.errors import CheckpointError
from imgcls.models.registry import create_model
from imgcls.training.optim import build_optimizer

CLASSES = ["chat 🐱", "Hund", "猫", "éclair"]


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = make_model(0)
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model_tensors(model), {"model": {"name": "keras-cnn"}, "classes": CLASSES})
    return path, model


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_weights_round_trip_give_identical_logits(saved):
    path, model = saved
    tensors, meta = load_checkpoint(path)
    fresh = make_model(1)  # different initialisation, so equality cannot be an accident
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), fresh(x))
        fresh.load_state_dict(split_prefix(tensors, MODEL_PREFIX), strict=True)
        assert torch.equal(model(x), fresh(x))
    assert set(split_prefix(tensors, MODEL_PREFIX)) == set(model.state_dict())


def test_metadata_round_trip_with_unicode_class_names(saved):
    path, _ = saved
    meta = read_metadata(path)
    assert meta["classes"] == CLASSES
    assert meta["model"] == {"name": "keras-cnn"}
    assert meta["schema"] == SCHEMA_VERSION
    assert meta["imgcls_version"]
    _, meta2 = load_checkpoint(path)
    assert meta2 == meta


def test_file_is_safetensors_not_pickle(saved, monkeypatch):
    path, _ = saved
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert 0 < header_len < len(data) - 8
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    assert json.loads(header["__metadata__"]["imgcls"])["classes"] == CLASSES
    assert not data.startswith(b"\x80")  # pickle protocol marker
    assert not data.startswith(b"PK")  # torch.save zip container

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load must never unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    tensors, _ = load_checkpoint(path)
    assert tensors


@pytest.mark.parametrize("failing", ["replace", "write"])
def test_failed_write_keeps_previous_file_and_leaves_no_temp(saved, monkeypatch, failing):
    path, model = saved
    before = path.read_bytes()
    names_before = files_in(path.parent)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace" if failing == "replace" else "fsync", disk_full)
    other = make_model(7)
    with pytest.raises(CheckpointError, match=str(path.name)):
        save_checkpoint(path, model_tensors(other), {"classes": ["x", "y", "z"]})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert files_in(path.parent) == names_before  # no temporary file left behind
    assert read_metadata(path)["classes"] == CLASSES


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "new.safetensors", model_tensors(make_model()), {})
    assert files_in(tmp_path) == []


def test_successful_overwrite_leaves_no_temp(saved):
    path, _ = saved
    save_checkpoint(path, model_tensors(make_model(2)), {"classes": ["a", "b", "c"]})
    assert files_in(path.parent) == [path.name]
    assert read_metadata(path)["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("keep", [0.5, 0.99, 100, 7])
def test_truncated_file_raises_checkpoint_error_naming_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    broken = path.with_name("cut.safetensors")
    broken.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        read_metadata(broken)


def test_random_bytes_raise_checkpoint_error(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    with pytest.raises(CheckpointError, match="noise.safetensors"):
        load_checkpoint(path)


def test_empty_and_missing_files_raise_checkpoint_error(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")


def write_raw(path: Path, metadata: dict | None) -> Path:
    save_file({"model.w": torch.zeros(2, 2)}, str(path), metadata=metadata)
    return path


def test_metadata_that_is_not_json_raises(tmp_path):
    path = write_raw(tmp_path / "edited.safetensors", {"imgcls": "{not json"})
    with pytest.raises(CheckpointError, match="edited.safetensors"):
        load_checkpoint(path)


@pytest.mark.parametrize("raw", ["[1, 2]", "null", '"text"', "3"])
def test_metadata_json_that_is_not_an_object_raises(tmp_path, raw):
    path = write_raw(tmp_path / "edited.safetensors", {"imgcls": raw})
    with pytest.raises(CheckpointError, match="edited.safetensors"):
        load_checkpoint(path)


def test_metadata_without_schema_raises(tmp_path):
    path = write_raw(tmp_path / "noschema.safetensors", {"imgcls": json.dumps({"classes": ["a"]})})
    with pytest.raises(CheckpointError, match="schema"):
        load_checkpoint(path)


def test_newer_schema_asks_to_upgrade(tmp_path):
    meta = {"schema": SCHEMA_VERSION + 1, "imgcls_version": "99.0"}
    path = write_raw(tmp_path / "future.safetensors", {"imgcls": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="Upgrade") as info:
        load_checkpoint(path)
    assert "future.safetensors" in str(info.value)


def test_bare_safetensors_without_imgcls_metadata_raises(tmp_path):
    for name, metadata in [("bare.safetensors", None), ("other.safetensors", {"format": "pt"})]:
        path = write_raw(tmp_path / name, metadata)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(path)


def test_tied_weights_are_saved(tmp_path):
    shared = torch.randn(3, 3)
    path = tmp_path / "tied.safetensors"
    save_checkpoint(path, {"a": shared, "b": shared}, {})
    tensors, _ = load_checkpoint(path)
    assert torch.equal(tensors["a"], shared) and torch.equal(tensors["b"], shared)


# --- optimizer state -------------------------------------------------------------------

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(11))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(X), Y).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "config",
    [
        OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        OptimConfig(name="sgd", lr=0.05, momentum=0.8, nesterov=False, weight_decay=0.0),
        OptimConfig(name="adamw", lr=0.01, weight_decay=0.05),
    ],
    ids=["sgd-nesterov", "sgd-momentum", "adamw"],
)
@pytest.mark.slow
def test_optimizer_state_round_trip_through_file(tmp_path, config):
    model = make_model(0)
    optimizer = build_optimizer(model, config)
    for _ in range(3):
        train_step(model, optimizer)

    optim_tensors, optim_state = optimizer_to_tensors(optimizer)
    assert optim_tensors, "the optimizer has state after three steps"
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {**model_tensors(model), **optim_tensors}, {"resume": {"optimizer": optim_state}})

    tensors, meta = load_checkpoint(path)
    restored_model = make_model(5)
    restored_model.load_state_dict(split_prefix(tensors, MODEL_PREFIX))
    # Built with different hyper-parameters: the saved ones must win.
    restored = build_optimizer(restored_model, OptimConfig(name=config.name, lr=0.9, weight_decay=0.5))
    optimizer_from_tensors(restored, tensors, meta["resume"]["optimizer"])

    for group, restored_group in zip(optimizer.param_groups, restored.param_groups, strict=True):
        assert restored_group["lr"] == group["lr"]
        assert restored_group["weight_decay"] == group["weight_decay"]

    train_step(model, optimizer)
    train_step(restored_model, restored)
    for p, q in zip(model.parameters(), restored_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_optimizer_state_without_restoring_differs():
    """Guards the test above: a fresh optimizer really does take a different step."""
    model = make_model(0)
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.05, momentum=0.9))
    for _ in range(3):
        train_step(model, optimizer)
    copy = make_model(5)
    copy.load_state_dict(model.state_dict())
    fresh = build_optimizer(copy, OptimConfig(name="sgd", lr=0.05, momentum=0.9))
    train_step(model, optimizer)
    train_step(copy, fresh)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), copy.parameters(), strict=True))
