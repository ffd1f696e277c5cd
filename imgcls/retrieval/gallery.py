"""A gallery: enrolled embeddings with their labels and image paths, tied to one model.

On disk a gallery is a folder, with no pickle anywhere:
  gallery.json    format, the model's identity hash, dimension, storage dtype, count,
                  open-set threshold and how it was calibrated, the index asked for
  embeddings.npy  (N, D) float32 or float16 unit vectors (np.load with allow_pickle=False)
  items.json      {"labels": [...], "paths": [...]}, row i of embeddings.npy
  index.faiss     the FAISS index (when one is used), so adding never rebuilds it
gallery.json is written last and records the count, so a write interrupted half-way is
detected on load instead of pairing rows with the wrong labels.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from filelock import FileLock, Timeout

from imgcls import __version__
from imgcls.data.sources import find_split_folders, scan_class_folders
from imgcls.errors import ConfigError, DataError, ImgclsError
from imgcls.files import LOCK_NAME, atomic_write_bytes, write_json
from imgcls.retrieval.embed import Embedder
from imgcls.retrieval.index import FaissIndex, SearchIndex, build_index, choose_kind

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
RECOGNITION = ("prototype", "nearest")


class GalleryError(ImgclsError):
    """A gallery folder is missing, damaged, or belongs to another model."""


@dataclass
class Gallery:
    embeddings: np.ndarray  # (N, D) float32 in memory, whatever the storage dtype
    labels: list[str]
    paths: list[str]
    model: dict  # identity (hash), checkpoint (absolute path when built), name, kwargs
    dtype: str = "float32"  # storage on disk; float16 halves the file, similarities move by ~1e-3
    index_kind: str = "auto"  # asked for: auto, exact, flat, ivf or hnsw
    recognition: str = "prototype"  # how a label is scored: see imgcls.retrieval.recognize
    threshold: float | None = None  # open-set score below which recognition answers "unknown"
    # what the threshold is compared with: "standardised" (recognize.open_set_score: prototype
    # galleries) or "similarity" (nearest-image galleries, and galleries calibrated before it)
    threshold_score: str = "similarity"
    calibration: dict | None = None
    version: int = 0  # gallery.json's stamp when read; every save adds one
    _index: SearchIndex | None = field(default=None, repr=False)
    _prototypes: tuple[list[str], np.ndarray] | None = field(default=None, repr=False)
    _spread: dict[str, tuple[float, float]] | None = field(default=None, repr=False)

    @classmethod
    def empty(
        cls, embedder: Embedder, *, dtype: str = "float32", index: str = "auto", recognition: str = "prototype"
    ) -> Gallery:
        if recognition not in RECOGNITION:
            raise ConfigError(f"recognition must be one of {', '.join(RECOGNITION)}, not {recognition!r}.")
        if dtype not in DTYPES:
            raise ConfigError(f"gallery dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
        choose_kind(0, index)  # refuses an unknown kind now rather than at the first query
        dim = int(embedder.embed(embedder.blank(1)).shape[1])
        model = {"identity": embedder.identity, "checkpoint": embedder.source, **embedder.metadata["model"]}
        return cls(np.empty((0, dim), np.float32), [], [], model, dtype, index, recognition)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def check_model(self, embedder: Embedder, where: str = "this gallery") -> None:
        """Refuse to compare embeddings from another model: they live in another space."""
        if embedder.identity != self.model.get("identity"):
            raise GalleryError(
                f"{where} was built with checkpoint {self.model.get('checkpoint')} "
                f"({self.model.get('name')}, identity {str(self.model.get('identity'))[:12]}), but "
                f"{embedder.source} ({embedder.metadata['model']['name']}, identity {embedder.identity[:12]}) "
                "was given. Query it with the same checkpoint, or build a new gallery for this one."
            )

    def add(self, label: str, embeddings: np.ndarray, paths: list[str]) -> None:
        """Enrol images under `label`; an index already built takes the new rows in place."""
        label = label.strip()
        if not label:
            raise ConfigError("a gallery label cannot be empty.")
        if embeddings.shape[1:] != (self.dim,):
            raise GalleryError(f"embeddings of dimension {embeddings.shape[1:]} do not fit a gallery of {self.dim}.")
        if len(embeddings) != len(paths):
            raise ValueError("one path per embedding")
        if self._index is not None and choose_kind(len(self) + len(embeddings), self.index_kind) != self._index.kind:
            self._index = None  # "auto" crossed to another kind: built anew at the next query
        if self._index is not None:
            self._index.add(embeddings)
        self.embeddings = np.concatenate([self.embeddings, embeddings.astype(np.float32)])
        self.labels += [label] * len(paths)
        self.paths += list(paths)
        self._prototypes = self._spread = None

    def remove(self, label: str) -> int:
        """Forget every image of `label`; the index is rebuilt at the next query."""
        label = label.strip()  # as add stored it
        keep = np.array([lab != label for lab in self.labels], dtype=bool)
        removed = int((~keep).sum())
        if removed == 0:
            known = ", ".join(self.counts()) or "none"
            raise GalleryError(f"no label {label!r} in this gallery (labels: {known}).")
        self.embeddings = self.embeddings[keep]
        self.labels = [lab for lab, k in zip(self.labels, keep, strict=True) if k]
        self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
        self._index = self._prototypes = self._spread = None
        self.threshold = self.calibration = None  # chosen for the old labels; calibrate again
        return removed

    def index(self) -> SearchIndex:
        if self._index is None:
            self._index = build_index(self.embeddings, choose_kind(len(self), self.index_kind))
        return self._index

    def prototypes(self) -> tuple[list[str], np.ndarray]:
        """(labels, (L, D) unit vectors): each label's mean embedding, renormalised."""
        if self._prototypes is None:
            names, rows = np.unique(np.array(self.labels, dtype=object), return_inverse=True)
            sums = np.zeros((len(names), self.dim), np.float64)
            np.add.at(sums, rows, self.embeddings)
            sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            self._prototypes = [str(n) for n in names], sums.astype(np.float32)
        return self._prototypes

    def label_spread(self) -> dict[str, tuple[float, float]]:
        """{label: (typical, spread)}: the mean and standard deviation of the similarity of the
        label's own images to its prototype, each image left out of the prototype it is compared
        with (otherwise a label of 5 images looks tighter than it is). Each label's variance is
        shrunk towards the labels' pooled variance as if SPREAD_PRIOR_IMAGES more images had it: a
        label of a few images borrows the gallery's spread, one of hundreds keeps its own; a label
        of one image takes the pooled figures. With no label of two images there is nothing to
        measure: (0, 1), and the score is the similarity."""
        if self._spread is None:
            self._spread = _label_spread(self.embeddings, self.labels)
        return self._spread

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the k most similar enrolled images, best first."""
        if len(self) == 0:
            raise GalleryError("the gallery is empty; enrol images with `imgcls gallery add` first.")
        if queries.shape[1:] != (self.dim,):
            raise GalleryError(f"queries of dimension {queries.shape[1:]} do not fit a gallery of {self.dim}.")
        return self.index().search(queries, k)

    def info(self) -> dict:
        return {
            "images": len(self),
            "labels": self.counts(),
            "dim": self.dim,
            "dtype": self.dtype,
            "index": self.index_kind,
            "index_used": choose_kind(len(self), self.index_kind),
            "recognition": self.recognition,
            "threshold": self.threshold,
            "threshold_score": self.threshold_score,
            "calibration": self.calibration,
            "model": self.model,
        }

    def save(self, folder: Path, *, replace: bool = False) -> None:
        """Write the gallery, under the folder's lock. A gallery another writer saved since this
        copy was read is refused (GalleryError) unless `replace` (a rebuild): saving would lose
        its changes. Writers that add to a gallery use update_gallery, which reads it first."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _writing(folder):
            on_disk = _version_on_disk(folder)
            if on_disk is not None and on_disk != self.version and not replace:
                raise GalleryError(
                    f"{folder} changed since it was read (version {on_disk}, not {self.version}): another "
                    "imgcls wrote to it. Nothing was saved; run the command again."
                )
            self.version = (on_disk or 0) + 1
            self._write(folder)

    def adopt(self, other: Gallery) -> None:
        """Become `other` (a newer copy read from disk), in place: the server's routes hold this object."""
        self.__dict__.update(other.__dict__)

    def _write(self, folder: Path) -> None:
        buffer = io.BytesIO()
        np.save(buffer, self.embeddings.astype(self.dtype), allow_pickle=False)
        atomic_write_bytes(folder / "embeddings.npy", buffer.getvalue())
        write_json(folder / "items.json", {"labels": self.labels, "paths": self.paths})
        kind = choose_kind(len(self), self.index_kind)
        index_file = folder / "index.faiss"
        if kind != "exact" and len(self):
            index = self.index()
            assert isinstance(index, FaissIndex)  # kind != exact
            tmp = folder / ".index.faiss.tmp"
            index.save(tmp)
            tmp.replace(index_file)
        else:
            index_file.unlink(missing_ok=True)
        write_json(
            folder / "gallery.json",
            {
                "format": FORMAT_VERSION,
                "imgcls_version": __version__,
                "model": self.model,
                "dim": self.dim,
                "dtype": self.dtype,
                "count": len(self),
                "index": self.index_kind,
                "index_built": kind if kind != "exact" and len(self) else None,
                "recognition": self.recognition,
                "threshold": self.threshold,
                "threshold_score": self.threshold_score,
                "calibration": self.calibration,
                "version": self.version,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> Gallery:
        folder = Path(folder)
        head = _read_json(folder / "gallery.json", folder)
        if head.get("format", 0) > FORMAT_VERSION:
            raise GalleryError(
                f"{folder} was written by a newer imgcls ({head.get('imgcls_version')}); upgrade imgcls."
            )
        items = _read_json(folder / "items.json", folder)
        try:
            embeddings = np.load(folder / "embeddings.npy", allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            raise GalleryError(f"{folder}/embeddings.npy cannot be read ({err}); rebuild the gallery.") from None
        count, labels, paths = head.get("count"), items.get("labels", []), items.get("paths", [])
        if not (len(embeddings) == len(labels) == len(paths) == count) or embeddings.shape[1:] != (head["dim"],):
            raise GalleryError(
                f"{folder}: embeddings ({embeddings.shape}), labels ({len(labels)}) and paths ({len(paths)}) "
                f"disagree with gallery.json (count {count}, dim {head.get('dim')}); a write was interrupted. "
                "Rebuild the gallery with `imgcls gallery build`."
            )
        gallery = cls(
            embeddings,
            list(labels),
            list(paths),
            head["model"],
            head.get("dtype", "float32"),
            head.get("index", "auto"),
            head.get("recognition", "prototype"),
            head.get("threshold"),
            head.get("threshold_score", "similarity"),  # galleries written before it: a similarity
            head.get("calibration"),
            int(head.get("version", 0)),
        )
        built, index_file = head.get("index_built"), folder / "index.faiss"
        if built and built == choose_kind(count, gallery.index_kind) and index_file.is_file():
            index = FaissIndex.load(index_file, built)
            if index.ntotal == count:
                gallery._index = index
            else:
                log.warning("%s holds %d vectors, not %d: rebuilding it", index_file, index.ntotal, count)
        return gallery


SPREAD_PRIOR_IMAGES = 20  # weight of the pooled variance in each label's (Gallery.label_spread)
SPREAD_BLOCK = 65536  # rows per step: the left-out prototypes of a million images would take gigabytes


def _label_spread(embeddings: np.ndarray, labels: list[str]) -> dict[str, tuple[float, float]]:
    names, rows = np.unique(np.array(labels, dtype=object), return_inverse=True)
    counts = np.bincount(rows, minlength=len(names))
    sums = np.zeros((len(names), embeddings.shape[1]), np.float64)
    np.add.at(sums, rows, embeddings)
    left_out = np.empty(len(rows))
    for start in range(0, len(rows), SPREAD_BLOCK):  # each image against its label's other images' mean
        block, own = embeddings[start : start + SPREAD_BLOCK].astype(np.float64), rows[start : start + SPREAD_BLOCK]
        others = sums[own] - block
        left_out[start : start + len(block)] = (block * others).sum(1) / np.maximum(
            np.linalg.norm(others, axis=1), 1e-12
        )
    measured = counts[rows] >= 2
    if not measured.any():
        return {str(n): (0.0, 1.0) for n in names}
    n = np.where(counts >= 2, counts, 0)
    own_mean = np.bincount(rows, weights=np.where(measured, left_out, 0.0), minlength=len(names)) / np.maximum(n, 1)
    deviation = np.where(measured, left_out - own_mean[rows], 0.0)
    own_var = np.bincount(rows, weights=deviation**2, minlength=len(names)) / np.maximum(n, 1)
    within = (deviation**2).sum() / n.sum()  # the labels' pooled variance, each about its own mean
    mean = np.where(n > 0, own_mean, left_out[measured].mean())
    spread = np.sqrt(np.maximum((n * own_var + SPREAD_PRIOR_IMAGES * within) / (n + SPREAD_PRIOR_IMAGES), 1e-12))
    return {str(name): (float(m), float(sd)) for name, m, sd in zip(names, mean, spread, strict=True)}


LOCK_WAIT_SECONDS = 60.0  # a writer waits this long for another to finish


_LOCKS: dict[str, FileLock] = {}  # one object per gallery, so that its lock is re-entrant in a thread


@contextmanager
def _writing(folder: Path):
    """The gallery's exclusive lock (filelock: released when its process dies)."""
    path = str((folder / LOCK_NAME).resolve())
    lock = _LOCKS.setdefault(path, FileLock(path, timeout=LOCK_WAIT_SECONDS))
    try:
        with lock:
            yield
    except Timeout:
        raise GalleryError(f"{folder} has been locked by another imgcls for {LOCK_WAIT_SECONDS:.0f} s.") from None


def _version_on_disk(folder: Path) -> int | None:
    head = folder / "gallery.json"
    if not head.is_file():
        return None
    return int(_read_json(head, folder).get("version", 0))


def update_gallery(folder: str | Path, change: Callable[[Gallery], T]) -> tuple[Gallery, T]:
    """Read the gallery, change(gallery), save it: all under its lock, so that two writers (the
    command line and a server) never lose each other's changes. Returns the gallery and what
    change returned."""
    folder = Path(folder)
    with _writing(folder):
        gallery = Gallery.load(folder)
        result = change(gallery)
        gallery.save(folder)  # the lock is re-entrant within this process
    return gallery, result


def _read_json(path: Path, folder: Path) -> dict:
    if not folder.is_dir():
        raise GalleryError(f"gallery {folder} does not exist; make one with `imgcls gallery build`.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GalleryError(f"{folder} is not an imgcls gallery (no {path.name}).") from None
    except (OSError, json.JSONDecodeError) as err:
        raise GalleryError(f"{path} cannot be read ({err}); rebuild the gallery.") from None
    if not isinstance(value, dict):
        raise GalleryError(f"{path} is not a gallery file; rebuild the gallery.")
    return value


def labelled_images(data: Path) -> dict[str, list[Path]]:
    """{label: images} of a folder of class folders; of its train/ when it is a split root."""
    data = Path(data)
    split = find_split_folders(data) if data.is_dir() else None
    root = split["train"] if split else data
    if split:
        log.info("%s has train/: enrolling its class folders", data)
    by_class = {name: paths for name, paths in scan_class_folders(root).items() if paths}
    if not by_class:
        raise DataError(f"{root} holds no class folders with images; give one folder per label.")
    return by_class


def build_gallery(
    embedder: Embedder, data: Path, *, dtype: str = "float32", index: str = "auto", recognition: str = "prototype"
) -> Gallery:
    """A gallery enrolling every image of `data`'s class folders under its folder's name."""
    gallery = Gallery.empty(embedder, dtype=dtype, index=index, recognition=recognition)
    for label, images in labelled_images(data).items():
        result = embedder.embed_paths([(str(p.absolute()), p) for p in images], desc=f"enrol {label}")
        gallery.add(label, result.embeddings, result.paths)
    return gallery
