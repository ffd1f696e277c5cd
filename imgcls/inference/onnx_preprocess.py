"""What imgcls does to a decoded image, as an ONNX graph: uint8 (N, H, W, C) of any height
and width in, the model's uint8 (N, S, S, C) square out.

It mirrors imgcls.data.decode.resize_square: a centre square of `crop_pct` x the shorter
side (policy "crop"), a squash, or a resize that keeps the aspect ratio and pads with black
(policy "pad"); then Pillow's antialiased resize. ONNX Resize with antialias=1 (opset 18)
is Pillow's algorithm (ONNX Runtime ported it, 8-bit fixed point included) once its weights
are renormalised at the borders as Pillow's are (exclude_outside=1) and, for bicubic,
Pillow's a = -0.5: measured within one grey level of Pillow. Written with onnx.helper
because no exporter emits this: torch's antialiased interpolate does not export, and its
crop sizes would be traced as constants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from imgcls.inference.onnx_runtime import PIXEL_INPUT as PIXELS
from imgcls.inference.onnx_runtime import PRE_OPSET, SQUARE

RESAMPLING = {"bilinear": ("linear", -0.75), "bicubic": ("cubic", -0.5)}  # Pillow's bicubic has a = -0.5


class _Builder:
    """Nodes and constants of one graph, named in order (the graph reads top to bottom)."""

    def __init__(self):
        self.nodes: list = []
        self.constants: list = []

    def const(self, name: str, values, dtype) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, kind: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [output], name=output, **attrs))
        return output


def _resize(b: _Builder, source: str, sizes: str, interpolation: str, output: str) -> str:
    mode, a = RESAMPLING[interpolation]
    return b.op(
        "Resize",
        [source, "", "", sizes],
        output,
        mode=mode,
        cubic_coeff_a=a,
        antialias=1,
        exclude_outside=1,
        axes=[1, 2],
        coordinate_transformation_mode="half_pixel",
    )


def _centre_crop(b: _Builder, hw: str, crop_pct: float) -> tuple[str, str]:
    """Start and end (height, width) of the centre square of side max(1, round(crop_pct x the
    shorter side)), as decode._crop_box computes it (round half to even, like Python's)."""
    short = b.op("ReduceMin", [hw], "short_side", keepdims=1)
    if crop_pct == 1.0:
        side = short
    else:
        scaled = b.op(
            "Mul",
            [b.op("Cast", [short], "short_f64", to=TensorProto.DOUBLE), b.const("crop_pct", [crop_pct], np.float64)],
            "crop_f64",
        )
        rounded = b.op("Cast", [b.op("Round", [scaled], "crop_rounded")], "crop_int", to=TensorProto.INT64)
        side = b.op("Max", [rounded, b.const("one", [1], np.int64)], "crop_side")
    start = b.op("Div", [b.op("Sub", [hw, side], "crop_spare"), b.const("two", [2], np.int64)], "crop_start")
    return start, b.op("Add", [start, side], "crop_end")


def _pad(b: _Builder, hw: str, size: int, interpolation: str) -> str:
    """Resize so the longer side is `size` (each side max(1, round(side x size / longer))),
    then pad with black, centred, as resize_square's "pad" does."""
    longer = b.op("Cast", [b.op("ReduceMax", [hw], "long_side", keepdims=1)], "long_f64", to=TensorProto.DOUBLE)
    scale = b.op("Div", [b.const("size_f64", [float(size)], np.float64), longer], "pad_scale")
    scaled = b.op("Mul", [b.op("Cast", [hw], "hw_f64", to=TensorProto.DOUBLE), scale], "inner_f64")
    rounded = b.op("Cast", [b.op("Round", [scaled], "inner_rounded")], "inner_int", to=TensorProto.INT64)
    inner = b.op("Max", [rounded, b.const("one", [1], np.int64)], "inner")
    resized = _resize(b, PIXELS, inner, interpolation, "inner_pixels")
    spare = b.op("Sub", [b.const("size_hw", [size, size], np.int64), inner], "pad_spare")
    before = b.op("Div", [spare, b.const("two", [2], np.int64)], "pad_before")
    after = b.op("Sub", [spare, before], "pad_after")
    zero = b.const("zero", [0], np.int64)
    pads = b.op("Concat", [zero, before, zero, zero, after, zero], "pads", axis=0)
    return b.op("Pad", [resized, pads], SQUARE, mode="constant")


def preprocessing_graph(size: int, channels: int, policy: str, crop_pct: float, interpolation: str) -> onnx.ModelProto:
    """The graph pixels (N, H, W, C) uint8 -> square_pixels (N, size, size, C) uint8."""
    if interpolation not in RESAMPLING:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {tuple(RESAMPLING)}")
    b = _Builder()
    hw = b.op(
        "Slice", [b.op("Shape", [PIXELS], "shape"), b.const("at1", [1], np.int64), b.const("at3", [3], np.int64)], "hw"
    )
    if policy in ("crop", "squash"):
        target = b.const("size_hw", [size, size], np.int64)
    if policy == "crop":
        start, end = _centre_crop(b, hw, crop_pct)
        cropped = b.op("Slice", [PIXELS, start, end, b.const("axes_hw", [1, 2], np.int64)], "cropped")
        _resize(b, cropped, target, interpolation, SQUARE)
    elif policy == "squash":
        _resize(b, PIXELS, target, interpolation, SQUARE)
    elif policy == "pad":
        _pad(b, hw, size, interpolation)
    else:
        raise ValueError(f"unknown resize policy {policy!r}")
    inputs = [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["batch", "height", "width", channels])]
    outputs = [helper.make_tensor_value_info(SQUARE, TensorProto.UINT8, ["batch", size, size, channels])]
    graph = helper.make_graph(b.nodes, "imgcls_preprocessing", inputs, outputs, initializer=b.constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", PRE_OPSET)])
