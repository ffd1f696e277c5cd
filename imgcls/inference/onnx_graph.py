"""A PyTorch classifier as an ONNX graph, in memory: used by `imgcls export` and by
predictors that run checkpoints through ONNX Runtime.

The graph has a dynamic batch size and outputs "logits" and "probabilities"; the
checkpoint's metadata JSON rides in the file's metadata, so the file stands alone. The
exporter is torch's TorchScript one (`dynamo=False`): it needs only the `onnx` package,
where torch's default dynamo exporter also needs `onnxscript`.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from imgcls.data.preprocess import Preprocessing
from imgcls.errors import ExportError
from imgcls.extras import require
from imgcls.inference.batched import batched_logits, is_multilabel, to_probabilities
from imgcls.inference.onnx_metadata import add_metadata
from imgcls.inference.onnx_runtime import FLOAT_INPUT, OUTPUTS, PRE_OPSET, SQUARE

if TYPE_CHECKING:
    import onnx

# Opset 17 for the float-input graph: OpenCV's DNN module (4.x) reads it. The preprocessing graph
# needs 18 (Resize's antialias), and the network joined to it must share that opset.
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


def _export_network(wrapper: nn.Module, meta: dict, name: str, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """torch's export of the wrapped classifier, batch dimension dynamic."""
    onnx = require("onnx", "onnx")

    buffer = io.BytesIO()
    dynamic = {key: {0: "batch"} for key in (name, *OUTPUTS)}
    try:
        with warnings.catch_warnings():
            # torch calls its TorchScript exporter legacy; it is the one that needs no onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            # A constant Pad (static_same_padding) is exported with its pads reversed by a Slice of
            # step -1, which torch's folding skips with a warning; the graph is right as it is.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                input_names=[name],
                output_names=list(OUTPUTS),
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many kinds for operators ONNX lacks
        raise ExportError(f"model {meta['model']['name']!r} cannot be exported to ONNX: {err}") from None
    return onnx.load_from_string(buffer.getvalue())


def _with_preprocessing(network: onnx.ModelProto, pre: Preprocessing) -> onnx.ModelProto:
    """The preprocessing graph (any-size uint8 -> the model's square) joined to the network."""
    import onnx  # the [onnx] extra, checked by export before this runs

    from imgcls.inference.onnx_preprocess import preprocessing_graph  # written with onnx.helper

    front = preprocessing_graph(
        pre.img_size,
        pre.channels,
        pre.resize,
        float(getattr(pre, "crop_pct", 1.0)),  # getattr: checkpoints from before these fields
        getattr(pre, "interpolation", "bilinear"),
    )
    front.ir_version = network.ir_version  # merge_models asks for one IR version
    merged = onnx.compose.merge_models(front, network, io_map=[(SQUARE, SQUARE)])
    # merge_models lists the default opset once per part; one entry is what runtimes expect.
    del merged.opset_import[:]
    merged.opset_import.append(onnx.helper.make_opsetid("", PRE_OPSET))
    return merged


def static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The model with timm's run-time "same" padding made constant for `example`'s size.

    timm's TensorFlow ports (tf_efficientnet_*, tf_mobilenetv3_*, tf_mixnet_*) compute each
    strided convolution's padding from the input's shape as they run; exported, that is a
    Shape/Gather/Ceil/Clip/Pad chain per convolution, which OpenCV 4.x's DNN module refuses
    ("Clip ... inputs.size()"). The network's input size is fixed in both exported graphs (the
    float input is S x S; with preprocessing, the resize makes S x S), so each padding is a
    constant: such a convolution becomes a constant Pad and a plain Conv, the same arithmetic.
    timm's own Conv2dSameExport does this only on old PyTorch versions. A model without such
    convolutions is returned as it is; otherwise a copy, so the caller's model keeps working
    at any size."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    same = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not same:
        return model
    sizes: dict[str, list[int]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:  # None: the input goes on unchanged
            sizes.setdefault(name, list(args[0].shape[-2:]))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in same.items()]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    model = copy.deepcopy(model)
    for name, old in same.items():
        conv = nn.Conv2d(
            old.in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            0,
            old.dilation,
            old.groups,
            old.bias is not None,
        )
        conv.load_state_dict(old.state_dict())
        padding = pad_same_arg(sizes[name], list(old.kernel_size), list(old.stride), list(old.dilation))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Sequential(nn.ZeroPad2d(padding), conv))
    return model


def to_onnx_bytes(model: nn.Module, pre: Preprocessing, meta: dict, *, pixels: bool) -> bytes:
    """The serialized ONNX model with imgcls's metadata. With `pixels` it takes decoded uint8
    images of any size and does imgcls's resize, normalisation and mirror TTA inside."""
    network = model.float().eval().to(memory_format=torch.contiguous_format)
    network = static_same_padding(network, torch.zeros(1, pre.channels, pre.img_size, pre.img_size))
    wrapper = ExportableModel(network, pre, pixels, multilabel=is_multilabel(meta)).eval()
    size, channels = pre.img_size, pre.channels
    if pixels:
        example = torch.zeros(2, size, size, channels, dtype=torch.uint8)
        proto = _with_preprocessing(_export_network(wrapper, meta, SQUARE, example, PRE_OPSET), pre)
    else:
        example = torch.zeros(2, channels, size, size)
        proto = _export_network(wrapper, meta, FLOAT_INPUT, example, OPSET)
    add_metadata(proto, pre, meta, pixels=pixels)
    return proto.SerializeToString()


def random_images(pre: Preprocessing, count: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, pre.img_size, pre.img_size, pre.channels), np.uint8)


def torch_probabilities(model: nn.Module, pre: Preprocessing, images: np.ndarray, multilabel: bool) -> np.ndarray:
    """PyTorch's float32 probabilities of (N, S, S, C) uint8 images."""
    logits = batched_logits(model, torch.from_numpy(np.ascontiguousarray(images)), pre, channels_last=False)
    return to_probabilities(logits, multilabel).numpy()


def max_difference(model: nn.Module, pre: Preprocessing, run, images: np.ndarray, multilabel: bool = False) -> float:
    """Largest probability difference between PyTorch (float32) and `run` (ONNX Runtime's
    probability function of the same model) on `images`."""
    return float(np.abs(torch_probabilities(model, pre, images, multilabel) - run(images)).max())
