"""Export a checkpoint to ONNX: one stand-alone file, checked against PyTorch before it is written.

checkpoint -> model (float32, eval) -> ONNX graph (onnx_graph.py) -> parity check in ONNX
Runtime against PyTorch -> atomic write. Optionally the graph takes decoded uint8 images of
any size and does imgcls's resize and normalisation inside; its resize is then also checked
against imgcls's own (resize_parity.py). An int8 copy is made by ONNX Runtime's static (calibrated)
quantization, kept only where it is faster and agrees with float32.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls import checkpoint as ckpt
from imgcls import files
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import ConfigError, ExportError, ImgclsError
from imgcls.extras import require
from imgcls.inference.batched import is_multilabel
from imgcls.inference.onnx_graph import (
    PARITY_TOLERANCE,
    max_difference,
    random_images,
    to_onnx_bytes,
    torch_probabilities,
)
from imgcls.inference.onnx_runtime import (
    PIXEL_INPUT,
    normalise,
    probability_function,
    session,
    square_part,
    takes_any_size,
)
from imgcls.inference.predictor import expand_paths
from imgcls.inference.resize_parity import RESIZE_TOLERANCE, ResizeParity, raw_images, resize_parity
from imgcls.models.registry import is_classic

log = logging.getLogger(__name__)

INT8_MIN_AGREEMENT = 0.99  # top-1 agreement with float32 that an int8 copy must keep
INT8_MIN_SPEEDUP = 1.05  # below this the gain is within the noise of a shared machine


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
    resize: ResizeParity | None = None  # with the preprocessing inside: its resize against imgcls's


def sample_images(paths: list[str], pre: Preprocessing, limit: int) -> np.ndarray:
    """Up to `limit` decoded images from files, folders or globs, spread evenly over them."""
    items = expand_paths(paths)
    step = max(1, len(items) // limit)
    images = []
    for shown, path in items[::step][:limit]:
        try:
            images.append(pre.decode(path, name=shown))
        except ImgclsError as err:
            log.info("skipped %s", err)
    if not images:
        raise ConfigError(f"no readable image in {' '.join(paths)}.")
    return np.stack(images)


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
    # A graph that resizes is checked in two parts: after its resize against PyTorch, as any
    # export, and its resize on images of other sizes against imgcls's.
    run = probability_function(session(square_part(data) if pixels else data), pre)
    difference = max_difference(model, pre, run, images, multilabel=is_multilabel(meta))
    if not difference < PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX model disagrees with PyTorch: largest probability difference {difference:.2e} "
            f"on {len(images)} images (allowed {PARITY_TOLERANCE:.0e}); nothing was written."
        )
    resize = _check_resize(data, model, pre, meta, check or calibration) if pixels else None
    out = Path(out)
    files.atomic_write_bytes(out, data)
    log.info("wrote %s (%.1f MB); parity %.1e on %d images", out, len(data) / 1e6, difference, len(images))
    int8_result = None
    if int8:
        calibration_images = sample_images(calibration, pre, limit=256)
        int8_result = quantize(data, out, pre, calibration_images, images, keep=keep_int8)
    return ExportResult(out, difference, len(images), source, int8_result, resize)


def _check_resize(data: bytes, model, pre: Preprocessing, meta: dict, paths: list[str] | None) -> ResizeParity:
    multilabel = is_multilabel(meta)
    parity = resize_parity(
        data, lambda squares: torch_probabilities(model, pre, squares, multilabel), pre, raw_images(paths, pre)
    )
    if not parity.probability <= RESIZE_TOLERANCE:
        raise ExportError(
            f"the ONNX graph's resize disagrees with imgcls's: largest probability difference "
            f"{parity.probability:.2e} on {parity.images} images (allowed {RESIZE_TOLERANCE:.0e}); nothing was written."
        )
    return parity


def _median_seconds(run, images: np.ndarray, repeats: int = 15) -> float:
    batch = images[:32]
    run(batch)  # warm-up: first runs allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def quantize_int8(fp32: bytes, pre: Preprocessing, calibration: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations) of a
    serialized float32 model, with activation ranges calibrated on `calibration` images."""
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sess = session(fp32)
    input_name, any_size = sess.get_inputs()[0].name, takes_any_size(sess)
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
            # Symbolic shape inference cannot follow the crop sizes of a graph that resizes inside;
            # ONNX shape inference (still run) is enough for quantization.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=any_size)
            quantize_static(
                str(prepared),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as err:  # ORT's quantizer raises untyped errors on graphs it cannot handle
            raise ExportError(f"int8 quantization failed: {err}") from None
        return target.read_bytes()


def quantize(
    fp32: bytes, out: Path, pre: Preprocessing, calibration: np.ndarray, check: np.ndarray, *, keep: bool
) -> Int8Result:
    """The int8 copy, written beside `out` only when it is faster and keeps top-1 on `check`."""
    int8 = quantize_int8(fp32, pre, calibration)
    run_fp32 = probability_function(session(fp32), pre)
    run_int8 = probability_function(session(int8), pre)
    agreement = float((run_fp32(check).argmax(1) == run_int8(check).argmax(1)).mean())
    speedup = _median_seconds(run_fp32, check) / _median_seconds(run_int8, check)
    faster, agrees = speedup >= INT8_MIN_SPEEDUP, agreement >= INT8_MIN_AGREEMENT
    problems = ([] if faster else ["not clearly faster than float32"]) + ([] if agrees else ["changes top-1 labels"])
    reason = " and ".join(problems) or "faster and agrees with float32"
    path = None
    if not problems or keep:
        path = out.with_name(out.stem + ".int8.onnx")
        files.atomic_write_bytes(path, int8)
    return Int8Result(path, speedup, agreement, reason)
