"""Running an exported .onnx classifier through ONNX Runtime, and the metadata it carries.

An imgcls ONNX file stands alone: its metadata holds the checkpoint's JSON (classes,
preprocessing, model), so a predictor needs nothing but the file. It takes either
normalised float input (N, C, H, W) named "input", or raw uint8 pixels (N, H, W, C) named
"pixels" when exported with the preprocessing inside; both give "logits" and
"probabilities". A "pixels" graph takes images of any size and does imgcls's resize first;
imgcls, which decodes and resizes itself, runs only its part after the resize (the tensor
"square_pixels"), so the ONNX file predicts exactly as the checkpoint does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgcls.checkpoint import check_classes
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import CheckpointError
from imgcls.extras import require
from imgcls.inference.batched import CPU, rows_per_batch

METADATA_KEY = "imgcls"  # the checkpoint's metadata JSON
FLOAT_INPUT = "input"
PIXEL_INPUT = "pixels"
SQUARE = "square_pixels"  # in a "pixels" graph: the model's square, after the resize
PRE_OPSET = 18  # the preprocessing graph: Resize's antialias and axes attributes
OUTPUTS = ("logits", "probabilities")


def normalise(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32, the same arithmetic as to_model_input."""
    scale, shift = (np.array(v, dtype=np.float32) for v in pre.scale_shift())
    x = images.astype(np.float32) * scale - shift
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def session(path: Path | str | bytes, threads: int = 0):
    """An ONNX Runtime CPU session; `path` may also be the serialized model."""
    ort = require("onnxruntime", "onnx")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3  # warnings about unused initialisers are noise to users
    # Idle ORT threads spin by default, taking the cores that decoding and HTTP threads need:
    # in `imgcls serve` (benchmarks/serve_load.py) spinning cost about 20% of the requests/s.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own untyped errors (InvalidGraph, NoSuchFile, Fail, ...)
        shown = "the exported model" if isinstance(path, bytes) else path
        raise CheckpointError(f"{shown}: ONNX Runtime cannot load it ({err}).") from None


def read_metadata(sess, path: Path | str) -> dict:
    raw = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is an ONNX file without imgcls metadata; export it with `imgcls export`.")
    try:
        meta = json.loads(raw)
        Preprocessing.from_dict(meta["preprocess"])  # checked here, so damage is reported as such
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its imgcls metadata is damaged ({err}).") from None
    check_classes(path, meta.get("classes"))
    return meta


def probability_function(sess, pre: Preprocessing) -> Callable[[np.ndarray], np.ndarray]:
    """(N, H, W, C) uint8 images -> (N, K) float32 probabilities through the session."""
    name = sess.get_inputs()[0].name

    def one_call(images: np.ndarray) -> np.ndarray:
        pixels = name in (PIXEL_INPUT, SQUARE)
        feed = np.ascontiguousarray(images, dtype=np.uint8) if pixels else normalise(images, pre)
        return sess.run(["probabilities"], {name: feed})[0]

    def run(images: np.ndarray) -> np.ndarray:
        # The session runs on the CPU, where PyTorch's pixel budget holds for it too: 256 images
        # of 224 px a call ran mobilenetv3_large_100 at 169 images a second, 32 at 233 and 16 at
        # 211 (resnet18: 51, 57 and 55), on 2 cores with AVX-512.
        rows = rows_per_batch(max(1, len(images)), images.shape[1] * images.shape[2], CPU)
        if len(images) <= rows:
            return one_call(images)
        return np.concatenate([one_call(images[i : i + rows]) for i in range(0, len(images), rows)])

    return run


def takes_any_size(sess) -> bool:
    """A "pixels" graph with dynamic height and width, i.e. one that resizes inside."""
    [first] = sess.get_inputs()
    return first.name == PIXEL_INPUT and not isinstance(first.shape[1], int)


def square_part(data: bytes) -> bytes:
    """The part of a "pixels" graph after its resize: input "square_pixels" (N, S, S, C) uint8."""
    import onnx
    import onnx.utils

    model = onnx.load_from_string(data)
    return onnx.utils.Extractor(model).extract_model([SQUARE], list(OUTPUTS)).SerializeToString()


def load_onnx(path: Path | str, threads: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], Preprocessing, dict]:
    """The probability function of an imgcls ONNX file, its preprocessing and its metadata."""
    if not Path(path).is_file():
        raise CheckpointError(f"model file {path} does not exist.")
    sess = session(path, threads)
    meta = read_metadata(sess, path)
    if takes_any_size(sess):
        sess = session(square_part(Path(path).read_bytes()), threads)
    pre = Preprocessing.from_dict(meta["preprocess"])
    outputs = sess.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and outputs != len(meta["classes"]):  # else a score would have no name
        raise CheckpointError(
            f"{path}: the model outputs {outputs} scores but its metadata names {len(meta['classes'])} classes; "
            "the file was edited. Export it again with `imgcls export`."
        )
    return probability_function(sess, pre), pre, meta
