"""Picture galleries of the report: the highest-loss mistakes and the most confident correct
answers, as thumbnails with their labels in HTML text (any script renders there)."""

from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np

from imgcls.data.decode import decode_image
from imgcls.data.shards import read_source
from imgcls.errors import DataError
from imgcls.report.predictions import Predictions

log = logging.getLogger(__name__)

THUMB = 112  # px, the longer side of a thumbnail
GALLERY_SIZE = 16  # images per gallery


def highest_loss_mistakes(predictions: Predictions, k: int = GALLERY_SIZE) -> np.ndarray:
    """Indices of misclassified images by descending cross-entropy loss (-log p(true class))."""
    wrong = np.flatnonzero(predictions.predicted != predictions.labels)
    loss = -np.log(np.clip(predictions.true_probability()[wrong], 1e-12, 1.0))
    return wrong[np.argsort(-loss, kind="stable")[:k]]


def most_confident_correct(predictions: Predictions, k: int = GALLERY_SIZE) -> np.ndarray:
    """Indices of correct answers, most confident first, taking classes in turn: the surest
    image of each class, then the second surest of each, so one easy class cannot fill it."""
    right = np.flatnonzero(predictions.predicted == predictions.labels)
    right = right[np.argsort(-predictions.confidence[right], kind="stable")]
    rank_in_class = np.zeros(len(right), dtype=np.int64)
    seen: dict[int, int] = {}
    for position, i in enumerate(right):
        label = int(predictions.labels[i])
        rank_in_class[position] = seen.get(label, 0)
        seen[label] = rank_in_class[position] + 1
    return right[np.argsort(rank_in_class, kind="stable")[:k]]


def thumbnail(pixels: np.ndarray, side: int = THUMB) -> str:
    """A PNG data URI of (H, W, C) uint8 pixels, small images enlarged with crisp pixels."""
    from PIL import Image

    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_thumbnail(path: str) -> str | None:
    try:
        # The file as the user sees it (not resized for the model); pixel limit as for training.
        return thumbnail(decode_image(read_source(path), size=None, max_pixels=64_000_000, name=path))
    except DataError as err:
        log.warning("report gallery: %s", err)
        return None


def gallery_html(predictions: Predictions, indices: np.ndarray, classes: list[str]) -> str:
    """Cards of thumbnail, true label, predicted label and confidence; a missing file says so."""
    cards = []
    for i in indices:
        true, pred = classes[predictions.labels[i]], classes[predictions.predicted[i]]
        uri = load_thumbnail(predictions.paths[i])
        picture = f'<img src="{uri}" alt="">' if uri else '<div class="missing">file not readable</div>'
        verdict = (
            f"<b>{_e(pred)}</b> {100 * predictions.confidence[i]:.1f}%"
            if true == pred
            else f"predicted <b>{_e(pred)}</b> {100 * predictions.confidence[i]:.1f}%<br>true {_e(true)} "
            f"{100 * predictions.true_probability()[i]:.1f}%"
        )
        title = _e(predictions.paths[i])
        cards.append(f'<figure class="thumb" title="{title}">{picture}<figcaption>{verdict}</figcaption></figure>')
    return f'<div class="gallery">{"".join(cards)}</div>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
