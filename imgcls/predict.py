"""Predictor: a checkpoint file in, top-k labels with scores out.

Predictor.from_checkpoint(path): read metadata -> create the model it names -> load the
weights -> decode and normalise images exactly as in training -> probabilities -> top-k.
Never imports training code, so `imgcls predict` starts fast.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.data.decode import decode_image
from imgcls.data.preprocess import Preprocessing
from imgcls.data.sources import is_image_file, list_images
from imgcls.errors import ImgclsError
from imgcls.inference import batched_logits, prepare_for_inference
from imgcls.models.registry import is_classic

if TYPE_CHECKING:
    from imgcls.models.classic import ClassicModel


@dataclass(frozen=True)
class Prediction:
    path: str
    labels: tuple[tuple[str, float], ...] = ()  # (label, score), best first
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [{"label": lab, "score": score} for lab, score in self.labels]}

    def to_text(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        return f"{self.path}: " + ", ".join(f"{lab} {score:.1%}" for lab, score in self.labels)


def expand_paths(arguments: Sequence[str]) -> list[tuple[str, Path]]:
    """(shown path, file) pairs: files as given, folders searched recursively for images,
    globs expanded. A path that does not exist is kept so its error is reported in order."""
    found: list[tuple[str, Path]] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found += [(os.path.join(arg, str(p.relative_to(path))), p) for p in list_images(path)]
        elif path.exists():
            found.append((arg, path))
        elif any(c in arg for c in "*?["):
            matches = [
                m for m in sorted(glob.glob(arg, recursive=True)) if Path(m).is_file() and is_image_file(Path(m))
            ]
            found += [(m, Path(m)) for m in matches] or [(arg, path)]  # no match: reported as missing
        else:
            found.append((arg, path))
    return found


@dataclass
class Predictor:
    model: nn.Module | ClassicModel  # a network, or the classic baseline
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: dict

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Predictor:
        meta = ckpt.read_metadata(Path(path))
        if is_classic(meta.get("model", {}).get("name", "")):
            from imgcls.models.classic import ClassicModel

            tensors, _ = ckpt.load_checkpoint(Path(path))
            model = ClassicModel.from_tensors(meta["model"]["name"], meta["model"].get("kwargs", {}), tensors)
            return cls(model, tuple(meta["classes"]), Preprocessing.from_dict(meta["preprocess"]), meta)
        model, pre, meta = ckpt.load_model(path)
        return cls(prepare_for_inference(model), tuple(meta["classes"]), pre, meta)

    def decode(self, source: Path | bytes, name: str | None = None) -> np.ndarray:
        pre = self.preprocessing
        return decode_image(
            source, size=pre.img_size, resize=pre.resize, channels=pre.channels, max_pixels=pre.max_pixels, name=name
        )

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, K) class probabilities of (N, H, W, C) uint8 images already decoded by `decode`."""
        if not isinstance(self.model, nn.Module):  # the classic baseline works on pixels itself
            return self.model.predict_proba(images)
        logits = batched_logits(
            self.model, torch.from_numpy(np.ascontiguousarray(images)), self.preprocessing, batch_size=batch_size
        )
        return logits.softmax(1).numpy()

    def top_k(self, probs: np.ndarray, k: int) -> tuple[tuple[str, float], ...]:
        order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(self.classes)))]
        return tuple((self.classes[i], float(probs[i])) for i in order)

    def predict_bytes(self, data: bytes, *, topk: int = 5, name: str = "<upload>") -> Prediction:
        probs = self.probabilities(self.decode(data, name=name)[None])[0]
        return Prediction(name, self.top_k(probs, topk))

    def predict_paths(
        self, paths: Sequence[tuple[str, Path]], *, topk: int = 5, batch_size: int = 256
    ) -> Iterator[Prediction]:
        """Predictions in input order; an unreadable file yields an error entry, the rest go on."""

        def load(item: tuple[str, Path]) -> np.ndarray | str:
            shown, path = item
            try:
                return self.decode(path, name=shown)
            except ImgclsError as err:
                return str(err)

        # Pillow releases the GIL while decoding, so threads overlap decoding with inference.
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                decoded = list(pool.map(load, chunk))
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                probs = self.probabilities(np.stack([decoded[i] for i in good])) if good else np.empty((0, 0))
                row = dict(zip(good, range(len(good)), strict=True))
                for i, (shown, _) in enumerate(chunk):
                    if i in row:
                        yield Prediction(shown, self.top_k(probs[row[i]], topk))
                    else:
                        yield Prediction(shown, error=_strip_name(decoded[i], shown))


def _strip_name(message: str, name: str) -> str:
    """Errors name their file; in a per-file result the path is already there."""
    return message.removeprefix(f"{name}: ")
