"""What a report needs beyond metrics.json: each evaluated image's path, true label and
probabilities, kept as predictions.npz next to the metrics so `imgcls report` can redraw
every curve and gallery later. Plain arrays only: it loads with allow_pickle=False."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import CheckpointError
from imgcls.files import atomic_write_bytes

FILE_NAME = "predictions.npz"


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray  # (N,) int64 true class index; multi-label: (N, K) 0/1 targets
    probs: np.ndarray  # (N, K) float32 probabilities
    paths: tuple[str, ...]  # (N,) the image files, as found when evaluating

    def __post_init__(self):
        if not (len(self.labels) == len(self.probs) == len(self.paths)):
            raise ValueError("labels, probabilities and paths must have one row per image")

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    def true_probability(self) -> np.ndarray:
        return self.probs[np.arange(len(self.labels)), self.labels]


def save_predictions(folder: Path, predictions: Predictions) -> Path:
    buffer = io.BytesIO()
    paths = np.array([p.encode("utf-8", "surrogateescape") for p in predictions.paths], dtype=np.bytes_)
    np.savez_compressed(
        buffer, labels=predictions.labels.astype(np.int64), probs=predictions.probs.astype(np.float32), paths=paths
    )
    path = Path(folder) / FILE_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_predictions(folder: Path) -> Predictions | None:
    """The saved predictions of a run or evaluation folder, or None when it has none."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            paths = tuple(bytes(p).decode("utf-8", "surrogateescape") for p in data["paths"])
            return Predictions(data["labels"].astype(np.int64), data["probs"].astype(np.float32), paths)
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the saved predictions ({err}).") from None
