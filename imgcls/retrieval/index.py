"""Nearest neighbours of unit vectors by inner product (cosine similarity).

"exact" is one matrix product in numpy: no dependency, no build time, exact, and fast
enough for small galleries. FAISS (faiss-cpu) serves large ones:
  flat  exhaustive like exact, in FAISS's BLAS-blocked kernels
  ivf   inverted lists: k-means cells trained once on the first vectors; a query scans nprobe cells
  hnsw  a navigable small-world graph: no training, sub-linear queries, more memory
Adding vectors to any of them inserts into the existing structure; nothing is rebuilt (an IVF
index keeps the cells it was trained with). FAISS cannot remove from an HNSW graph, so a
gallery rebuilds its index after `gallery remove`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from imgcls.errors import ConfigError, MissingExtraError
from imgcls.extras import require

log = logging.getLogger(__name__)

INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")
# "auto" keeps exact search below this many vectors and uses IVF from there. Measured with
# benchmarks/recognition.py on 2 busy cores, 192-d: exact search took 0.1-28 ms per query at
# 10k and 36-120 ms at 1M; at 1M, IVF built in 10-20 s and answered in 3-6 ms with recall@10
# 0.9999, HNSW took 298 s to build and answered in 0.3 ms with recall@10 0.93.
AUTO_EXACT_BELOW = 100_000
HNSW_M = 32  # graph degree: FAISS's usual value; more is better recall, more memory
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
# IVF: at most 1024 cells, trained on 64 vectors per cell: k-means over 1M vectors into 4,000
# cells (4 sqrt(N)) would take minutes on a 2-core CPU; 1024 cells of a 64k sample take seconds.
IVF_MAX_CELLS = 1024
IVF_TRAIN_PER_CELL = 64
SIMILARITY_BLOCK = 2**26  # similarities per matrix product (256 MB): 1024 queries at 64k vectors, 67 at 1M


class SearchIndex(Protocol):
    kind: str

    @property
    def ntotal(self) -> int: ...

    def add(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def choose_kind(count: int, requested: str = "auto") -> str:
    if requested == "auto":
        return "exact" if count < AUTO_EXACT_BELOW else "ivf"
    if requested not in INDEX_KINDS:
        raise ConfigError(f"unknown index {requested!r}; choose auto or one of {', '.join(INDEX_KINDS)}.")
    return requested


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


@dataclass
class ExactIndex:
    """All inner products, then the k largest per query (argpartition, then a sort of k)."""

    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    kind: str = "exact"

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def add(self, vectors: np.ndarray) -> None:
        vectors = _as_float32(vectors)
        self.vectors = vectors if self.ntotal == 0 else np.concatenate([self.vectors, vectors])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_float32(queries)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        scores, ids = [], []
        chunk = max(1, min(1024, SIMILARITY_BLOCK // self.ntotal))
        for start in range(0, len(queries), chunk):
            sims = queries[start : start + chunk] @ self.vectors.T
            top = (
                np.argpartition(-sims, k - 1, axis=1)[:, :k]
                if k < self.ntotal
                else np.tile(np.arange(k), (len(sims), 1))
            )
            top_sims = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_sims, axis=1, kind="stable")
            ids.append(np.take_along_axis(top, order, axis=1).astype(np.int64))
            scores.append(np.take_along_axis(top_sims, order, axis=1))
        return np.concatenate(scores), np.concatenate(ids)


def _faiss():
    try:
        return require("faiss", "retrieval")
    except MissingExtraError as err:
        raise MissingExtraError(f"{err} (--index exact works without it)") from None


@dataclass
class FaissIndex:
    """A FAISS index over inner products; `index` is the faiss object itself."""

    index: object
    kind: str

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(_as_float32(vectors))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        scores, ids = self.index.search(_as_float32(queries), k)
        return scores, ids.astype(np.int64)  # an approximate index may return id -1 where it found fewer

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str) -> FaissIndex:
        index = _faiss().read_index(str(path))
        _tune(index, kind)
        return cls(index, kind)


def _tune(index, kind: str) -> None:
    """Query-time settings, which FAISS does not keep in the file."""
    if kind == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        index.nprobe = ivf_nprobe(index.nlist)


def ivf_cells(count: int) -> int:
    """About 4 sqrt(N) cells (FAISS's guideline), with at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39, IVF_MAX_CELLS))


def ivf_nprobe(cells: int) -> int:
    return min(cells, max(8, cells // 16))


def build_index(vectors: np.ndarray, kind: str) -> SearchIndex:
    """An index of `kind` holding `vectors` (N, D); an IVF index is trained on them."""
    vectors = _as_float32(vectors)
    if kind == "exact":
        index = ExactIndex()
        index.add(vectors)
        return index
    faiss = _faiss()
    dim = vectors.shape[1]
    if kind == "flat":
        raw = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        raw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        raw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif kind == "ivf":
        if len(vectors) < 39:
            raise ConfigError(f"an IVF index needs at least 39 vectors to train on, not {len(vectors)}; use exact.")
        cells = ivf_cells(len(vectors))
        raw = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        sample = min(len(vectors), IVF_TRAIN_PER_CELL * cells)
        rows = np.random.default_rng(0).choice(len(vectors), sample, replace=False) if sample < len(vectors) else None
        raw.train(vectors if rows is None else vectors[np.sort(rows)])
    else:
        raise ConfigError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}.")
    _tune(raw, kind)
    index = FaissIndex(raw, kind)
    index.add(vectors)
    log.debug("built a %s index of %d vectors", kind, len(vectors))
    return index
