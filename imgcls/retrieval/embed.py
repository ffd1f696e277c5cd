"""Embeddings: a checkpoint's pooled pre-logit features, L2-normalised.

Every imgcls model has timm's interface, so the embedding of any checkpoint is
forward_head(forward_features(x), pre_logits=True): the vector the classifier's last linear
layer reads. For a model trained with a margin loss (`imgcls train --loss arcface`,
imgcls.models.embedding) that is the trained embedding, the output of its linear + batch-
norm neck, which its cosine classifier compares with each class. Normalised to unit length,
the inner product of two embeddings is their cosine similarity, which is what galleries,
search and clustering compare. A checkpoint trained by imgcls also holds the whitening of
its features on its training images (imgcls.models.whitening), applied before the last
normalisation: without it, pictures of classes the network never saw crowd towards the
classes it knows.

A model's identity is a hash of its weights, architecture, preprocessing and whitening: embeddings
from two different models live in different spaces and must never be compared.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls import files
from imgcls.data.preprocess import Preprocessing, to_model_input
from imgcls.errors import CheckpointError, ConfigError, ImgclsError
from imgcls.inference.batched import rows_per_batch
from imgcls.models.registry import is_classic
from imgcls.models.whitening import Whitening
from imgcls.progress import progress_bar

log = logging.getLogger(__name__)


def model_identity(network: nn.Module, metadata: dict) -> str:
    """sha256 of the weights, the model's name and arguments, its preprocessing and whitening.

    Not the file's hash: best.safetensors and a copy re-saved with other metadata (or
    last.safetensors holding the same weights plus optimizer state) embed identically."""
    digest = hashlib.sha256()
    spec = {"model": metadata.get("model"), "preprocess": metadata.get("preprocess")}
    if metadata.get("whitening") is not None:  # only then: older checkpoints keep their identity
        spec["whitening"] = metadata["whitening"]
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class EmbeddedPaths:
    embeddings: np.ndarray  # (N, D) float32, unit rows, for the readable files in input order
    paths: list[str]  # shown paths of those rows
    errors: list[dict] = field(default_factory=list)  # [{path, error}] of unreadable files


@dataclass
class Embedder:
    """One network as a function: (N, H, W, C) uint8 images -> (N, D) unit vectors."""

    network: nn.Module
    preprocessing: Preprocessing
    metadata: dict
    identity: str
    source: str  # the checkpoint's absolute path: a gallery finds its model again through it
    batch_size: int = 256
    whitening: Whitening | None = None  # checkpoints from before it have none

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Embedder:
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            raise ConfigError(
                f"{path}: embeddings need the .safetensors checkpoint (an ONNX export holds only the classifier)."
            )
        meta = ckpt.read_metadata(path)
        name = meta.get("model", {}).get("name", "")
        if is_classic(name):
            raise ConfigError(
                f"{path} is the classic {name} pipeline, which has no learned features to embed; "
                "use a neural network checkpoint (e.g. small-net, keras-cnn, resnet18)."
            )
        network, pre, meta = ckpt.load_model(path)
        if not hasattr(network, "forward_head") or not hasattr(network, "forward_features"):
            raise ConfigError(f"{path}: model {name!r} has no forward_features/forward_head to take features from.")
        network = network.eval().to(memory_format=torch.channels_last)
        embedder = cls(network, pre, meta, model_identity(network, meta), str(path.absolute()))
        if meta.get("whitening") is not None:
            try:
                embedder.whitening = Whitening.from_dict(meta["whitening"], embedder.embed(embedder.blank(1)).shape[1])
            except CheckpointError as err:
                raise CheckpointError(f"{path}: {err}") from None
        return embedder

    @property
    def dim(self) -> int:
        return int(getattr(self.network, "num_features", 0)) or self.embed(self.blank(1)).shape[1]

    def blank(self, count: int) -> np.ndarray:
        pre = self.preprocessing
        return np.zeros((count, pre.img_size, pre.img_size, pre.channels), np.uint8)

    def decode(self, source: Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        """Pixels as the model takes them, decoded exactly as for classification."""
        return self.preprocessing.decode(source, name=name, max_pixels=max_pixels)

    def _pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_head(self.network.forward_features(x), pre_logits=True).flatten(1).float()

    @torch.inference_mode()
    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = to_model_input(pixels, self.preprocessing)
        features = self._pre_logits(x)
        if self.preprocessing.test_flip:  # the model is read with its mirror image too, as in predict
            features = (features + self._pre_logits(x.flip(3).contiguous(memory_format=torch.channels_last))) / 2
        features = torch.nn.functional.normalize(features, dim=1)
        return features if self.whitening is None else self.whitening.apply(features)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit vectors of (N, H, W, C) uint8 images already decoded by `decode`."""
        if len(images) == 0:
            return np.empty((0, int(getattr(self.network, "num_features", 0))), np.float32)
        step = rows_per_batch(self.batch_size, images.shape[1] * images.shape[2], torch.device("cpu"))
        parts = [
            self._features(torch.from_numpy(np.require(images[i : i + step], requirements="CW"))).numpy()
            for i in range(0, len(images), step)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed_paths(self, items: Sequence[tuple[str, Path]], *, desc: str = "embed") -> EmbeddedPaths:
        """Embeddings of (shown path, file) pairs; unreadable files are listed, the rest go on."""

        def load(item: tuple[str, Path]) -> np.ndarray | str:
            try:
                return self.decode(item[1], name=item[0])
            except ImgclsError as err:
                return str(err).removeprefix(f"{item[0]}: ")

        rows, paths, errors = [], [], []
        # Pillow releases the GIL while decoding, so threads overlap decoding with the network.
        bar = progress_bar(total=len(items), desc=desc, unit="img")
        with bar, ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                decoded = list(pool.map(load, chunk))
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                if good:
                    rows.append(self.embed(np.stack([decoded[i] for i in good])))
                paths += [chunk[i][0] for i in good]
                errors += [{"path": chunk[i][0], "error": d} for i, d in enumerate(decoded) if isinstance(d, str)]
                bar.update(len(chunk))
        for item in errors:
            log.warning("%s: skipped (%s)", item["path"], item["error"])
        dim = rows[0].shape[1] if rows else int(getattr(self.network, "num_features", 0))
        return EmbeddedPaths(np.concatenate(rows) if rows else np.empty((0, dim), np.float32), paths, errors)


def save_embeddings(out: Path, result: EmbeddedPaths, embedder: Embedder) -> Path:
    """OUT.npy (float32, loadable without pickle) and OUT.json: the rows' paths and the model."""
    out = Path(out)
    if out.suffix.lower() != ".npy":
        out = out.with_name(out.name + ".npy")
    sidecar = out.with_suffix(".json")
    buffer = io.BytesIO()
    np.save(buffer, result.embeddings, allow_pickle=False)
    files.atomic_write_bytes(out, buffer.getvalue())
    files.write_json(
        sidecar,
        {
            "paths": result.paths,
            "errors": result.errors,
            "dim": int(result.embeddings.shape[1]),
            "model": {"identity": embedder.identity, "checkpoint": embedder.source, **embedder.metadata["model"]},
        },
    )
    return out
