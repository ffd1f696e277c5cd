"""How closely a "pixels" ONNX graph's resize follows imgcls's own, on images of many sizes.

The graph's network part is checked against PyTorch to 1e-4 (export.py); this checks the
part before it: the graph's square (ONNX Resize) against imgcls.data.decode.resize_square
(Pillow), in grey levels, and the graph's probabilities on the unresized image against
PyTorch's on imgcls's square. Both crop first and then resize with Pillow's algorithm, so
they agree to a grey level or so, far within the 1e-2 in probability allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgcls.data.decode import decode_image, resize_square
from imgcls.data.preprocess import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.inference.onnx_runtime import OUTPUTS, PIXEL_INPUT, SQUARE, session
from imgcls.inference.predictor import expand_paths

log = logging.getLogger(__name__)

RESIZE_TOLERANCE = 1e-2  # largest allowed probability difference from imgcls's own resize
SHAPES = ((480, 640), (640, 480), (32, 1000), (17, 31), (1, 300), (300, 300), (233, 197))


@dataclass(frozen=True)
class ResizeParity:
    probability: float  # largest |p(graph on the image) - p(PyTorch on imgcls's square)|
    levels: int  # largest grey-level difference of the squares (0-255)
    images: int


def imgcls_square(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(H, W, C) uint8 -> imgcls's (S, S, C) square, by resize_square itself."""
    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    # crop_pct and interpolation are newer Preprocessing fields; pass them where they exist.
    extra = {key: getattr(pre, key) for key in ("crop_pct", "interpolation") if hasattr(pre, key)}
    square = np.array(resize_square(img, pre.img_size, pre.resize, **extra), dtype=np.uint8)
    return square[:, :, None] if square.ndim == 2 else square


def raw_images(paths: list[str] | None, pre: Preprocessing, limit: int = 32) -> list[np.ndarray]:
    """Decoded, unresized images from `paths`, or smooth random images of awkward shapes."""
    if not paths:
        rng = np.random.default_rng(0)
        images = []
        for h, w in SHAPES:  # smooth: noise upscaled, as photos are smoother than noise
            coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), np.uint8)
            big = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            images.append(np.asarray(big.convert("L" if pre.channels == 1 else "RGB")).reshape(h, w, pre.channels))
        return images
    items = expand_paths(paths)
    images = []
    for shown, path in items[:: max(1, len(items) // limit)][:limit]:
        try:
            images.append(decode_image(path, channels=pre.channels, max_pixels=pre.max_pixels, name=shown))
        except ImgclsError as err:
            log.info("skipped %s", err)
    return images


def resize_parity(data: bytes, reference, pre: Preprocessing, images: list[np.ndarray]) -> ResizeParity:
    """`reference`: PyTorch's probability function of (N, S, S, C) squares."""
    import onnx
    import onnx.utils

    full = session(data)
    front = session(
        onnx.utils.Extractor(onnx.load_from_string(data)).extract_model([PIXEL_INPUT], [SQUARE]).SerializeToString()
    )
    probability, levels = 0.0, 0
    for image in images:
        ours = imgcls_square(image, pre)
        theirs = front.run([SQUARE], {PIXEL_INPUT: image[None]})[0][0]
        levels = max(levels, int(np.abs(ours.astype(int) - theirs).max()))
        graph = full.run([OUTPUTS[1]], {PIXEL_INPUT: image[None]})[0]
        probability = max(probability, float(np.abs(graph - reference(ours[None])).max()))
    return ResizeParity(probability, levels, len(images))
