"""Optional features without their extra: one line naming the extra to install, exit 2.

A missing package is simulated with `sys.modules[name] = None`, which makes its import fail
as an uninstalled one would."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli.main import main
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import MissingExtraError
from imgcls.extras import available, require
from imgcls.models.registry import create_model


def missing(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_require_names_the_extra(monkeypatch):
    assert require("numpy", "onnx") is np and available("numpy")
    missing(monkeypatch, "faiss")
    assert not available("faiss")
    expected = r"needs faiss, which is not installed: pip install 'imgcls\[retrieval\]'"
    with pytest.raises(MissingExtraError, match=expected):
        require("faiss", "retrieval")
    with pytest.raises(ValueError, match="unknown extra"):
        require("numpy", "no-such-extra")


def test_serve_without_the_serve_extra(monkeypatch, capsys, tmp_path):
    missing(monkeypatch, "fastapi")
    for name in [m for m in sys.modules if m == "imgcls.serve" or m.startswith("imgcls.serve.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new process
    assert main(["serve", str(tmp_path / "model.safetensors")]) == 2
    assert one_error_line(capsys) == (
        "imgcls: error: the HTTP server (imgcls serve) needs fastapi, which is not installed: "
        "pip install 'imgcls[serve]'"
    )


def test_data_check_without_the_doctor_extra(monkeypatch, capsys, class_folders):
    missing(monkeypatch, "imagehash")
    assert main(["data", "check", str(class_folders)]) == 2
    assert "pip install 'imgcls[doctor]'" in one_error_line(capsys)


def test_export_without_the_onnx_extra(monkeypatch, capsys, tmp_path):
    from imgcls.checkpoint import MODEL_PREFIX, save_checkpoint

    missing(monkeypatch, "onnx")
    model = create_model("keras-cnn", num_classes=2, in_chans=1, img_size=16)
    pre = Preprocessing(16, 1, (0.5,), (0.5,))
    meta = {"model": {"name": "keras-cnn", "kwargs": {}}, "classes": ["a", "b"], "preprocess": pre.to_dict()}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}, meta)
    assert main(["export", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'imgcls[onnx]'" in one_error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_runtime_falls_back_to_pytorch_without_the_onnx_extra(monkeypatch, caplog):
    """predict --runtime auto and serve choose ONNX Runtime; without it they run on PyTorch."""
    from imgcls.inference.predictor import _onnx_run

    missing(monkeypatch, "onnx", "onnxruntime")
    network = create_model("keras-cnn", num_classes=2, in_chans=1, img_size=16)
    with caplog.at_level(logging.WARNING):
        assert _onnx_run(network, Preprocessing(16, 1, (0.5,), (0.5,)), {"classes": ["a", "b"]}, "m") is None
    assert "running on PyTorch" in caplog.text and "imgcls[onnx]" in caplog.text


def test_report_says_why_there_is_no_grad_cam_without_the_explain_extra(monkeypatch, tmp_path):
    from imgcls.report.explain import why_not_explained

    missing(monkeypatch, "captum")
    assert "pip install 'imgcls[explain]'" in why_not_explained(Path(tmp_path / "best.safetensors"))


def test_large_gallery_index_without_the_retrieval_extra(monkeypatch):
    from imgcls.retrieval.index import build_index

    missing(monkeypatch, "faiss")
    vectors = np.eye(4, dtype=np.float32)
    assert build_index(vectors, "exact").ntotal == 4  # exact search needs no extra
    with pytest.raises(MissingExtraError, match=r"imgcls\[retrieval\].*--index exact works without it"):
        build_index(vectors, "flat")


def test_zeroshot_without_the_zeroshot_extra(monkeypatch, capsys, tmp_path):
    missing(monkeypatch, "open_clip")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["zeroshot", str(image), "--labels", "cat,dog"]) == 2
    assert "pip install 'imgcls[zeroshot]'" in one_error_line(capsys)
