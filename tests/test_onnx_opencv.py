"""The plain ONNX export in OpenCV 4.x's DNN module (opencv-python-headless), against ONNX
Runtime; and what OpenCV does not read (the --with-preprocessing graph), as docs/deploy.md says."""

from __future__ import annotations

from pathlib import Path

import cv2  # opencv-python-headless, in the test extra
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.export import export_onnx
from imgcls.inference.onnx_graph import static_same_padding
from imgcls.models import create_model

CLASSES = ["ant", "bee", "cicada"]


def checkpoint(tmp_path: Path, name: str, size: int, channels: int = 3) -> Path:
    """A checkpoint of `name` with random weights, as training writes best.safetensors."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), in_chans=channels, img_size=size)
    pre = Preprocessing(img_size=size, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    meta = {"task": "single-label", "model": {"name": name, "kwargs": {}}, "classes": CLASSES}
    path = tmp_path / f"{name}.safetensors"
    ckpt.save_checkpoint(path, ckpt.model_tensors(model), {**meta, "preprocess": pre.to_dict()})
    return path


def opencv_and_onnxruntime(path: Path, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    names = list(net.getUnconnectedOutLayersNames())
    assert sorted(names) == ["logits", "probabilities"]
    session = ort.InferenceSession(str(path))
    expected = session.run(names, {session.get_inputs()[0].name: x})
    return list(net.forward(names)), expected


@pytest.mark.parametrize(
    ("name", "size", "channels"),
    [
        pytest.param("tf_efficientnet_lite0", 64, 3, marks=pytest.mark.slow, id="tf_efficientnet_lite0"),
        pytest.param("resnet18", 32, 3, id="resnet18"),
        pytest.param("keras-cnn", 28, 1, id="keras-cnn-grey"),
    ],
)
def test_opencv_reads_the_plain_export_and_agrees_with_onnxruntime(tmp_path, name, size, channels):
    out = tmp_path / "model.onnx"
    result = export_onnx(checkpoint(tmp_path, name, size, channels), out)
    assert result.max_difference < 1e-4  # the export's own parity check against PyTorch still holds
    x = np.random.default_rng(0).standard_normal((4, channels, size, size)).astype(np.float32)
    (logits, probs), (ort_logits, ort_probs) = opencv_and_onnxruntime(out, x)
    assert probs.shape == ort_probs.shape == (4, len(CLASSES))
    np.testing.assert_allclose(probs, ort_probs, atol=1e-5)
    np.testing.assert_allclose(logits, ort_logits, atol=1e-4 * max(1.0, float(np.abs(ort_logits).max())))


def test_same_padding_becomes_constant_and_the_model_is_untouched():
    """tf_ models pad "same" from the input's shape at run time; the export gets constant pads
    (no Shape, Ceil or Clip on shapes in the graph), the same outputs, and the caller's model
    keeps its own convolutions."""
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=3, in_chans=3, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    static = static_same_padding(model, x)
    assert static is not model
    assert not any(isinstance(m, Conv2dSame) for m in static.modules())
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 5
    with torch.no_grad():
        torch.testing.assert_close(static(x), model(x), rtol=0, atol=1e-6)
    plain = create_model("resnet18", num_classes=3, in_chans=3, img_size=32)
    assert static_same_padding(plain, torch.zeros(1, 3, 32, 32)) is plain  # nothing to change: no copy


def test_exported_graph_has_no_shape_arithmetic(tmp_path):
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint(tmp_path, "tf_efficientnet_lite0", 32), out)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert not ops & {"Shape", "Gather", "Ceil"}, ops


def test_opencv_does_not_read_the_graph_with_preprocessing(tmp_path):
    """docs/deploy.md says OpenCV takes the plain export only: the --with-preprocessing graph's
    any-size input (dynamic shapes) is refused by OpenCV 4.x. When a newer OpenCV reads it,
    this fails and the docs should say so."""
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint(tmp_path, "keras-cnn", 28, 1), out, pixels=True)
    with pytest.raises(cv2.error):
        cv2.dnn.readNetFromONNX(str(out))
