"""Open-set recognition and similarity search over a gallery, and choosing the threshold.

A label's score is the cosine similarity of the query to
  prototype  the label's mean embedding (renormalised), as in prototypical networks and weight
             imprinting: one vector per label, however many images it has (the default), or
  nearest    the label's most similar enrolled image (nearest neighbour).
The best label has the highest score. Below the gallery's threshold the answer is "unknown":
the image resembles nothing enrolled closely enough. Nearest-neighbour favours labels with
many images: with 6,000 images per known Fashion-MNIST class and 5 per new class, a new
class's test images were recognised 21% of the time by nearest image and 67% by prototype
(benchmarks/recognition.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from imgcls.retrieval.gallery import Gallery

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# Neighbours fetched per query to find the best few distinct labels: a label absent from the
# nearest 100 images is far below the best one anyway.
MIN_NEIGHBOURS = 100
# Without unknown images to calibrate on, keep this share of correct recognitions accepted.
TARGET_ACCEPT = 0.95


@dataclass(frozen=True)
class Recognition:
    path: str
    label: str = UNKNOWN  # the best label, or "unknown" below the threshold
    similarity: float = 0.0  # cosine similarity of the nearest enrolled image
    candidates: tuple[tuple[str, float], ...] = ()  # best labels with their similarity, best first
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        top = [{"label": lab, "similarity": sim} for lab, sim in self.candidates]
        return {"path": self.path, "label": self.label, "similarity": self.similarity, "candidates": top}

    def to_text(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        rest = ", ".join(f"{lab} {sim:.3f}" for lab, sim in self.candidates)
        return f"{self.path}: {self.label} ({self.similarity:.3f})  [{rest}]"


@dataclass(frozen=True)
class Match:
    path: str
    label: str
    similarity: float


@dataclass(frozen=True)
class SearchResult:
    path: str
    matches: tuple[Match, ...] = ()
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        found = [{"path": m.path, "label": m.label, "similarity": m.similarity} for m in self.matches]
        return {"path": self.path, "matches": found}

    def to_text(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        lines = [f"{self.path}:"]
        lines += [f"  {i:3d}  {m.similarity:.3f}  {m.label}  {m.path}" for i, m in enumerate(self.matches, 1)]
        return "\n".join(lines)


def label_scores(
    gallery: Gallery, queries: np.ndarray, topk: int, by: str | None = None
) -> list[list[tuple[str, float]]]:
    """Per query, up to `topk` distinct labels with their score, best first."""
    if (by or gallery.recognition) == "prototype":
        if len(gallery) == 0:
            gallery.search(queries, 1)  # raises the empty-gallery error
        names, prototypes = gallery.prototypes()
        sims = np.asarray(queries, np.float32) @ prototypes.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :topk]
        return [[(names[j], float(sims[i, j])) for j in row] for i, row in enumerate(order)]
    scores, ids = gallery.search(queries, max(MIN_NEIGHBOURS, 10 * topk))
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        best: dict[str, float] = {}
        for score, i in zip(row_scores, row_ids, strict=True):
            if i >= 0:  # an approximate index marks missing neighbours with -1
                best.setdefault(gallery.labels[i], float(score))  # rows come best first
            if len(best) == topk:
                break
        results.append(list(best.items()))
    return results


def recognize(gallery: Gallery, queries: np.ndarray, paths: list[str], *, topk: int = 3) -> list[Recognition]:
    threshold = gallery.threshold if gallery.threshold is not None else -np.inf
    out = []
    for path, candidates in zip(paths, label_scores(gallery, queries, topk), strict=True):
        label, similarity = candidates[0] if candidates else (UNKNOWN, -1.0)
        out.append(Recognition(path, label if similarity >= threshold else UNKNOWN, similarity, tuple(candidates)))
    return out


def search(gallery: Gallery, queries: np.ndarray, paths: list[str], *, k: int = 10) -> list[SearchResult]:
    scores, ids = gallery.search(queries, k)
    out = []
    for path, row_scores, row_ids in zip(paths, scores, ids, strict=True):
        matches = tuple(
            Match(gallery.paths[i], gallery.labels[i], float(s))
            for s, i in zip(row_scores, row_ids, strict=True)
            if i >= 0
        )
        out.append(SearchResult(path, matches))
    return out


def choose_threshold(similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray) -> dict:
    """The open-set threshold from held-out queries.

    similarity: best similarity per query; correct: the best label is the true one (known
    queries); unknown: the query's label is not enrolled. With unknown queries, the threshold
    maximises balanced open-set accuracy: the mean of (known queries recognised correctly and
    accepted) and (unknown queries rejected). Without any, it keeps TARGET_ACCEPT of the
    correct recognitions accepted."""
    similarity = np.asarray(similarity, np.float64)
    correct, unknown = np.asarray(correct, bool), np.asarray(unknown, bool)
    known = ~unknown
    if not known.any():
        raise ValueError("calibration needs images of enrolled labels")
    if unknown.any():
        method = "balanced open-set accuracy on held-out known and unknown images"
        candidates = np.unique(np.concatenate([similarity, [np.inf]]))
        accepted = similarity[None, :] >= candidates[:, None]  # (thresholds, queries)
        known_ok = (accepted[:, known] & correct[known]).mean(1)
        unknown_ok = (~accepted[:, unknown]).mean(1)
        best = int(np.argmax(known_ok + unknown_ok))
        # Midway between the chosen similarity and the next lower one: the margin is shared.
        lower = candidates[best - 1] if best > 0 else candidates[best] - 0.01
        threshold = float((candidates[best] + lower) / 2) if np.isfinite(candidates[best]) else float(lower + 1e-6)
    else:
        method = f"keeps {TARGET_ACCEPT:.0%} of correct recognitions (no unknown images held out)"
        pool = similarity[known & correct] if (known & correct).any() else similarity[known]
        threshold = float(np.quantile(pool, 1 - TARGET_ACCEPT))
    accept = similarity >= threshold
    stats = {
        "threshold": threshold,
        "method": method,
        "known_images": int(known.sum()),
        "unknown_images": int(unknown.sum()),
        "known_accuracy": float((accept & correct)[known].mean()),  # right label and accepted
        "known_accepted": float(accept[known].mean()),
        "unknown_rejected": float((~accept[unknown]).mean()) if unknown.any() else None,
    }
    if unknown.any():
        stats["balanced_accuracy"] = (stats["known_accuracy"] + stats["unknown_rejected"]) / 2
    return stats


def calibrate(gallery: Gallery, queries: np.ndarray, true_labels: list[str]) -> dict:
    """Choose and store the gallery's threshold from held-out queries with their true labels;
    labels the gallery does not have are the unknowns."""
    enrolled = set(gallery.labels)
    best = [cands[0] if cands else (UNKNOWN, -1.0) for cands in label_scores(gallery, queries, 1)]
    similarity = np.array([s for _, s in best])
    correct = np.array([lab == truth for (lab, _), truth in zip(best, true_labels, strict=True)])
    unknown = np.array([truth not in enrolled for truth in true_labels])
    stats = choose_threshold(similarity, correct, unknown)
    gallery.threshold, gallery.calibration = stats["threshold"], stats
    return stats
