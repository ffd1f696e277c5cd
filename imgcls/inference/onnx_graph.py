"""A PyTorch classifier as an ONNX graph, in memory: used by `imgcls export` and by
predictors that run checkpoints through ONNX Runtime.

The graph has a dynamic batch size and outputs "logits" and "probabilities"; the
checkpoint's metadata JSON rides in the file's metadata, so the file stands alone. The
exporter is torch's TorchScript one (`dynamo=False`): it needs only the `onnx` package,
where torch's default dynamo exporter also needs `onnxscript`.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import torch
from torch import nn

from imgcls.data.preprocess import Preprocessing
from imgcls.errors import ExportError
from imgcls.extras import require
from imgcls.inference.batched import batched_logits, is_multilabel, to_probabilities
from imgcls.inference.onnx_runtime import FLOAT_INPUT, METADATA_KEY, OUTPUTS, PIXEL_INPUT

OPSET = 17
PARITY_TOLERANCE = 1e-4  # largest allowed |probability(ONNX) - probability(PyTorch)|


class ExportableModel(nn.Module):
    """The classifier with softmax attached and, with `pixels`, its preprocessing inside:
    (N, H, W, C) uint8 in, so a caller in any language cannot normalise wrongly."""

    def __init__(self, model: nn.Module, pre: Preprocessing, pixels: bool, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.pixels = pixels
        self.multilabel = multilabel
        self.test_flip = pre.test_flip
        scale, shift = pre.scale_shift()
        self.register_buffer("scale", torch.tensor(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pixels:
            x = x.permute(0, 3, 1, 2).float() * self.scale - self.shift
        logits = self.model(x)
        if self.test_flip:
            logits = (logits + self.model(x.flip(3))) / 2
        return logits, to_probabilities(logits, self.multilabel)


def to_onnx_bytes(model: nn.Module, pre: Preprocessing, meta: dict, *, pixels: bool) -> bytes:
    """The serialized ONNX model with imgcls's metadata."""
    onnx = require("onnx", "onnx")

    network = model.float().eval().to(memory_format=torch.contiguous_format)
    wrapper = ExportableModel(network, pre, pixels, multilabel=is_multilabel(meta)).eval()
    size, channels = pre.img_size, pre.channels
    if pixels:
        name, example = PIXEL_INPUT, torch.zeros(2, size, size, channels, dtype=torch.uint8)
    else:
        name, example = FLOAT_INPUT, torch.zeros(2, channels, size, size)
    buffer = io.BytesIO()
    dynamic = {key: {0: "batch"} for key in (name, *OUTPUTS)}
    try:
        with warnings.catch_warnings():
            # torch calls its TorchScript exporter legacy; it is the one that needs no onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                input_names=[name],
                output_names=list(OUTPUTS),
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many kinds for operators ONNX lacks
        raise ExportError(f"model {meta['model']['name']!r} cannot be exported to ONNX: {err}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    input_format = "uint8 pixels (N, H, W, C), 0-255" if pixels else "normalised float32 (N, C, H, W)"
    props = {
        METADATA_KEY: json.dumps(meta, ensure_ascii=False),
        "classes": json.dumps(meta["classes"], ensure_ascii=False),
        "input_format": input_format,
        "mean": json.dumps(pre.mean),
        "std": json.dumps(pre.std),
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "imgcls"
    proto.doc_string = f"imgcls classifier {meta['model']['name']}: {len(meta['classes'])} classes, {input_format}"
    return proto.SerializeToString()


def random_images(pre: Preprocessing, count: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, pre.img_size, pre.img_size, pre.channels), np.uint8)


def max_difference(model: nn.Module, pre: Preprocessing, run, images: np.ndarray, multilabel: bool = False) -> float:
    """Largest probability difference between PyTorch (float32) and `run` (ONNX Runtime's
    probability function of the same model) on `images`."""
    logits = batched_logits(model, torch.from_numpy(images), pre, channels_last=False)
    expected = to_probabilities(logits, multilabel).numpy()
    return float(np.abs(expected - run(images)).max())
