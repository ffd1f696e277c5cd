"""The metadata an imgcls ONNX file carries, in plain keys a client reads without knowing imgcls.

Every value is a string (ONNX metadata_props are string to string): lists and numbers as
JSON, the steps a client must do itself in plain words. The checkpoint's full metadata JSON
stays under "imgcls" for imgcls itself. docs/deploy.md lists the keys.
"""

from __future__ import annotations

import json

from imgcls import __version__
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.onnx_runtime import METADATA_KEY

EXIF = "apply the EXIF orientation before the model (Pillow: ImageOps.exif_transpose; browsers do it when drawing)"
ALPHA = "composite transparent pixels over white (255) before the model"


def _crop_words(pre: Preprocessing) -> str:
    crop_pct = float(getattr(pre, "crop_pct", 1.0))
    if pre.resize == "crop":
        return f"centre square of {crop_pct:g} x the shorter side, then resized to {pre.img_size}x{pre.img_size}"
    if pre.resize == "squash":
        return f"none: the whole image squashed to {pre.img_size}x{pre.img_size}"
    return f"none: resized so the longer side is {pre.img_size}, then padded with black to a centred square"


def _layout_words(pre: Preprocessing, pixels: bool) -> str:
    colour = "RGB" if pre.channels == 3 else "grey"
    if pixels:
        inside = "crop, resize and normalisation inside"
        return f"NHWC uint8 {colour} 0-255, any height and width (one size per batch); {inside}"
    size = f"{pre.img_size}x{pre.img_size}"
    return f"NCHW float32 {colour} {size}, (pixel / 255 - mean) / std; the client crops, resizes and normalises"


def plain_metadata(pre: Preprocessing, meta: dict, *, pixels: bool) -> dict[str, str]:
    thresholds = meta.get("thresholds")
    interpolation = getattr(pre, "interpolation", "bilinear")
    return {
        METADATA_KEY: json.dumps(meta, ensure_ascii=False),
        "classes": json.dumps(meta["classes"], ensure_ascii=False),
        "input_layout": _layout_words(pre, pixels),
        "resize": f"{pre.img_size}x{pre.img_size}",
        "crop": _crop_words(pre),
        "interpolation": f"{interpolation}, antialiased as Pillow's Image.resize",
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "alpha": ALPHA,
        "exif": EXIF,
        "mirror_tta": json.dumps(bool(pre.test_flip)),
        # Multi-label models only: a class is present when its probability reaches its threshold.
        "multilabel_thresholds": json.dumps(thresholds["per_class"] if thresholds else None),
        "imgcls_version": __version__,
    }


def add_metadata(proto, pre: Preprocessing, meta: dict, *, pixels: bool) -> None:
    """Write the metadata into the ONNX model `proto`, and name imgcls as its producer."""
    for key, value in plain_metadata(pre, meta, pixels=pixels).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "imgcls"
    proto.producer_version = __version__  # torch's exporter writes its own version here
    classes = len(meta["classes"])
    proto.doc_string = f"imgcls classifier {meta['model']['name']}: {classes} classes, {_layout_words(pre, pixels)}"
