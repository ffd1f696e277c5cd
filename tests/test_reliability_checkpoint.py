"""Damaged and edited checkpoints: every change after saving, to a weight byte or to the
metadata, is a CheckpointError naming the file; a newer schema says which imgcls wrote it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcls import __version__
from imgcls import checkpoint as ckpt
from imgcls.errors import CheckpointError
from imgcls.inference.predictor import Predictor


def _header(data: bytes) -> tuple[int, dict]:
    (size,) = struct.unpack("<Q", data[:8])
    return size, json.loads(data[8 : 8 + size])


def _with_header(data: bytes, header: dict) -> bytes:
    """The same tensor bytes behind another JSON header (padded as safetensors pads)."""
    size, _ = _header(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def _edit_metadata(path, change) -> None:
    """Rewrite a checkpoint's imgcls metadata with change(meta), leaving its checksum as it was."""
    data = path.read_bytes()
    _, header = _header(data)
    meta = json.loads(header["__metadata__"][ckpt.METADATA_KEY])
    change(meta)
    header["__metadata__"][ckpt.METADATA_KEY] = json.dumps(meta)
    path.write_bytes(_with_header(data, header))


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    tensors = {"model.w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "model.b": torch.ones(8)}
    meta = {"classes": ["猫", "dog"], "resume": {"history": [{"epoch": 1, "val_acc": 0.5}], "keys": {3: 1, 10: 2}}}
    ckpt.save_checkpoint(path, tensors, meta)
    return path


def test_round_trip_verifies(saved):
    tensors, meta = ckpt.load_checkpoint(saved)
    assert meta["classes"] == ["猫", "dog"] and len(meta[ckpt.DIGEST_KEY]) == 64
    assert torch.equal(tensors["model.w"], torch.arange(64, dtype=torch.float32).reshape(8, 8))


@pytest.mark.parametrize("offset", [1, 100, 250])  # bytes from the end: inside the tensor data
def test_one_changed_weight_byte_is_refused(saved, offset):
    data = bytearray(saved.read_bytes())
    data[-offset] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: its contents do not match the checksum"):
        ckpt.load_checkpoint(saved)


def test_edited_metadata_is_refused(saved):
    _edit_metadata(saved, lambda meta: meta.update(classes=["dog", "猫"]))  # swapped: every prediction wrong
    assert ckpt.read_metadata(saved)["classes"] == ["dog", "猫"]  # readable, but not to be trusted:
    with pytest.raises(CheckpointError, match="model.safetensors.*damaged or edited"):
        ckpt.load_checkpoint(saved)


def test_checkpoint_without_checksum_still_loads(saved):
    """Files written before checksums existed have none; they load as before."""
    _edit_metadata(saved, lambda meta: meta.pop(ckpt.DIGEST_KEY))
    assert ckpt.load_checkpoint(saved)[1]["classes"] == ["猫", "dog"]


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_truncated_file_names_the_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_checkpoint(saved)


def test_newer_schema_says_which_imgcls_wrote_it(saved):
    _edit_metadata(saved, lambda meta: meta.update(schema=ckpt.SCHEMA_VERSION + 1, imgcls_version="9.0.0"))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(saved)
    message = str(info.value)
    assert "model.safetensors" in message and "imgcls 9.0.0" in message and __version__ in message
    assert "Upgrade imgcls" in message


def test_predictor_refuses_an_edited_checkpoint(tmp_path):
    from imgcls.models import create_model

    model = create_model("softmax", num_classes=2, in_chans=1, img_size=8)
    pre = {"img_size": 8, "channels": 1, "mean": [0.5], "std": [0.25], "resize": "crop", "max_pixels": 10**6}
    path = tmp_path / "best.safetensors"
    tensors = {ckpt.MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    ckpt.save_checkpoint(path, tensors, {"model": {"name": "softmax"}, "classes": ["a", "b"], "preprocess": pre})
    assert Predictor.from_file(path, runtime="torch").classes == ("a", "b")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="best.safetensors.*checksum"):
        Predictor.from_file(path, runtime="torch")


# --- fuzz ------------------------------------------------------------------------------------

edit = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]), st.floats(0, 1), st.binary(min_size=1, max_size=8)
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_any_damage_is_a_checkpoint_error_or_an_intact_load(tmp_path_factory, edits):
    """Whatever happens to the bytes, loading gives the saved tensors back or a CheckpointError
    naming the file: never another exception, never other weights."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "fuzzed.safetensors"
    tensors = {"model.w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    ckpt.save_checkpoint(path, tensors, {"classes": ["a", "b", "c"]})
    data = bytearray(path.read_bytes())
    for kind, where, payload in edits:
        pos = min(int(where * len(data)), max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[pos] ^= payload[0] or 1
        elif kind == "insert":
            data[pos:pos] = payload
        elif kind == "delete":
            del data[pos : pos + len(payload)]
        else:
            del data[pos:]
    path.write_bytes(bytes(data))
    try:
        loaded, meta = ckpt.load_checkpoint(path)
    except CheckpointError as err:
        assert "fuzzed.safetensors" in str(err)
    else:
        assert torch.equal(loaded["model.w"], tensors["model.w"]) and meta["classes"] == ["a", "b", "c"]
