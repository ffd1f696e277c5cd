"""Export a checkpoint to ONNX: one stand-alone file, checked against PyTorch before it is written.

checkpoint -> model (float32, eval) -> ONNX graph with a dynamic batch size, outputs
"logits" and "probabilities" -> the checkpoint's metadata JSON in the file's metadata ->
parity check in ONNX Runtime against PyTorch -> atomic write. Optionally the graph takes
raw uint8 pixels and normalises inside, and an int8 copy is made by ONNX Runtime's static
(calibrated) quantization, kept only where it is faster and agrees with float32.

The exporter is torch's TorchScript one (`dynamo=False`): it needs only the `onnx`
package, where torch's default dynamo exporter also needs `onnxscript`.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.data.decode import decode_image
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import ConfigError, ExportError, ImgclsError
from imgcls.inference import batched_logits
from imgcls.models.registry import is_classic
from imgcls.onnx_model import (
    FLOAT_INPUT,
    METADATA_KEY,
    OUTPUTS,
    PIXEL_INPUT,
    normalise,
    probability_function,
    session,
)  # fmt: skip
from imgcls.predict import expand_paths

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # largest allowed |probability(ONNX) - probability(PyTorch)|
INT8_MIN_AGREEMENT = 0.99  # top-1 agreement with float32 that an int8 copy must keep
INT8_MIN_SPEEDUP = 1.05  # below this the gain is within the noise of a shared machine
OPSET = 17


@dataclass(frozen=True)
class Int8Result:
    path: Path | None  # None when the int8 copy was not kept
    speedup: float  # float32 seconds / int8 seconds, batch 32, median of repeats
    agreement: float  # share of check images whose top-1 label is unchanged
    reason: str


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_difference: float  # largest probability difference against PyTorch
    check_images: int
    check_source: str
    int8: Int8Result | None = None


class ExportableModel(nn.Module):
    """The classifier with softmax attached and, with `pixels`, its preprocessing inside:
    (N, H, W, C) uint8 in, so a caller in any language cannot normalise wrongly."""

    def __init__(self, model: nn.Module, pre: Preprocessing, pixels: bool):
        super().__init__()
        self.model = model
        self.pixels = pixels
        scale = [1.0 / (255.0 * s) for s in pre.std]
        shift = [m / s for m, s in zip(pre.mean, pre.std, strict=True)]
        self.register_buffer("scale", torch.tensor(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pixels:
            x = x.permute(0, 3, 1, 2).float() * self.scale - self.shift
        logits = self.model(x)
        return logits, logits.softmax(1)


def sample_images(paths: list[str], pre: Preprocessing, limit: int) -> np.ndarray:
    """Up to `limit` decoded images from files, folders or globs, spread evenly over them."""
    items = expand_paths(paths)
    step = max(1, len(items) // limit)
    images = []
    for shown, path in items[::step][:limit]:
        try:
            images.append(decode_image(path, size=pre.img_size, resize=pre.resize, channels=pre.channels,
                                       max_pixels=pre.max_pixels, name=shown))  # fmt: skip
        except ImgclsError as err:
            log.info("skipped %s", err)
    if not images:
        raise ConfigError(f"no readable image in {' '.join(paths)}.")
    return np.stack(images)


def random_images(pre: Preprocessing, count: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, pre.img_size, pre.img_size, pre.channels), np.uint8)


def to_onnx_bytes(model: nn.Module, pre: Preprocessing, meta: dict, *, pixels: bool) -> bytes:
    """The serialized ONNX model with imgcls's metadata."""
    import onnx

    wrapper = ExportableModel(model.float().eval().to(memory_format=torch.contiguous_format), pre, pixels).eval()
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
            torch.onnx.export(wrapper, (example,), buffer, input_names=[name], output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)  # fmt: skip
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


def parity(model: nn.Module, pre: Preprocessing, onnx_bytes: bytes, images: np.ndarray) -> float:
    """Largest probability difference between PyTorch (float32) and ONNX Runtime on `images`."""
    expected = batched_logits(model, torch.from_numpy(images), pre, channels_last=False).softmax(1).numpy()
    got = probability_function(session(onnx_bytes), pre)(images)
    return float(np.abs(expected - got).max())


def export_onnx(
    checkpoint: Path,
    out: Path,
    *,
    pixels: bool = False,
    check: list[str] | None = None,
    int8: bool = False,
    calibration: list[str] | None = None,
    keep_int8: bool = False,
) -> ExportResult:
    """Export `checkpoint` to `out`; raises ExportError when ONNX and PyTorch disagree."""
    meta = ckpt.read_metadata(Path(checkpoint))
    if is_classic(meta.get("model", {}).get("name", "")):
        raise ConfigError(f"{checkpoint}: the classic baseline ({meta['model']['name']}) has no ONNX export.")
    if int8 and not calibration:
        raise ConfigError("--int8 needs --calibration DATA: a folder of training images to calibrate on.")
    model, pre, meta = ckpt.load_model(checkpoint)
    model = model.float().eval()
    data = to_onnx_bytes(model, pre, meta, pixels=pixels)
    if check or calibration:
        images = sample_images(check or calibration, pre, limit=256)
        source = " ".join(check or calibration)
    else:
        images, source = random_images(pre), "random pixels (give --check DATA for real images)"
    difference = parity(model, pre, data, images)
    if not difference < PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX model disagrees with PyTorch: largest probability difference {difference:.2e} "
            f"on {len(images)} images (allowed {PARITY_TOLERANCE:.0e}); nothing was written."
        )
    out = Path(out)
    ckpt.atomic_write_bytes(out, data)
    log.info("wrote %s (%.1f MB); parity %.1e on %d images", out, len(data) / 1e6, difference, len(images))
    int8_result = None
    if int8:
        calibration_images = sample_images(calibration, pre, limit=256)
        int8_result = quantize(data, out, pre, calibration_images, images, keep=keep_int8)
    return ExportResult(out, difference, len(images), source, int8_result)


def _median_seconds(run, images: np.ndarray, repeats: int = 15) -> float:
    batch = images[:32]
    run(batch)  # warm-up: first runs allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def quantize(
    fp32: bytes, out: Path, pre: Preprocessing, calibration: np.ndarray, check: np.ndarray, *, keep: bool
) -> Int8Result:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on `calibration`; the
    copy is written beside `out` only when it is faster and keeps top-1 on `check`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = session(fp32).get_inputs()[0].name
    feeds = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(feeds)

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {input_name: batch if input_name == PIXEL_INPUT else normalise(batch, pre)}

    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as tmp:
        source, prepared, target = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        try:
            # Shape inference and graph fusion first, as ONNX Runtime's quantization guide asks.
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        except Exception as err:  # ORT's quantizer raises untyped errors on graphs it cannot handle
            raise ExportError(f"int8 quantization failed: {err}") from None
        int8 = target.read_bytes()
    run_fp32 = probability_function(session(fp32), pre)
    run_int8 = probability_function(session(int8), pre)
    agreement = float((run_fp32(check).argmax(1) == run_int8(check).argmax(1)).mean())
    speedup = _median_seconds(run_fp32, check) / _median_seconds(run_int8, check)
    faster, agrees = speedup >= INT8_MIN_SPEEDUP, agreement >= INT8_MIN_AGREEMENT
    if faster and agrees:
        reason = "faster and agrees with float32"
    else:
        problems = ([] if faster else ["not clearly faster than float32"]) + (
            [] if agrees else ["changes top-1 labels"]
        )
        reason = " and ".join(problems)
    path = None
    if (faster and agrees) or keep:
        path = out.with_name(out.stem + ".int8.onnx")
        ckpt.atomic_write_bytes(path, int8)
    return Int8Result(path, speedup, agreement, reason)
