"""Open-set recognition and similarity search over a gallery, and choosing the threshold.

A label's score is the cosine similarity of the query to
  prototype  the label's mean embedding (renormalised), as in prototypical networks and weight
             imprinting: one vector per label, however many images it has (the default), or
  nearest    the label's most similar enrolled image (nearest neighbour).
The best label has the highest score. Nearest-neighbour favours labels with many images:
with 6,000 images per known Fashion-MNIST class and 5 per new class, a new class's test images
were recognised 21% of the time by nearest image and 67% by prototype (benchmarks/recognition.py).

Below the gallery's threshold the answer is "unknown": the image resembles nothing enrolled
closely enough. In a prototype gallery "closely enough" is judged by the label's own spread
(open_set_score): labels differ in how tightly their images gather, and one similarity cannot
fit them all. A never-enrolled ankle boot is as similar to the sneaker prototype as many
sneakers are, yet far below what sneakers typically reach; by the bare similarity it was told
from known images with AUROC 0.713, by the standardised score with 0.948 (benchmarks/
recognition.py, whitened; the per-class distance model of OpenMax, Bendale & Boult 2016, with a
mean and deviation in place of its Weibull fit).
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
# Calibration keeps this share of known images accepted (of correct recognitions, when no
# unknown images are held out), unless told otherwise (gallery calibrate --keep-known).
TARGET_ACCEPT = 0.95


@dataclass(frozen=True)
class Recognition:
    path: str
    label: str = UNKNOWN  # the best label, or "unknown" below the threshold
    similarity: float = 0.0  # cosine similarity of the best label (its prototype or nearest image)
    candidates: tuple[tuple[str, float], ...] = ()  # best labels with their similarity, best first
    error: str | None = None
    score: float = 0.0  # what the threshold is compared with (open_set_score)

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        top = [{"label": lab, "similarity": sim} for lab, sim in self.candidates]
        return {
            "path": self.path,
            "label": self.label,
            "similarity": self.similarity,
            "score": self.score,
            "candidates": top,
        }

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


def score_kind(gallery: Gallery) -> str:
    """What a threshold calibrated now for this gallery is compared with."""
    return "standardised" if gallery.recognition == "prototype" else "similarity"


def open_set_score(gallery: Gallery, label: str, similarity: float, kind: str) -> float:
    """How far the best label's similarity stands above or below what the label's own images
    typically reach, in its own standard deviations ("standardised"; Gallery.label_spread), or
    the similarity itself ("similarity")."""
    if kind == "similarity" or label == UNKNOWN:
        return similarity
    typical, spread = gallery.label_spread()[label]
    return (similarity - typical) / spread


def recognize(gallery: Gallery, queries: np.ndarray, paths: list[str], *, topk: int = 3) -> list[Recognition]:
    threshold = gallery.threshold if gallery.threshold is not None else -np.inf
    kind = gallery.threshold_score if gallery.threshold is not None else score_kind(gallery)
    out = []
    for path, candidates in zip(paths, label_scores(gallery, queries, topk), strict=True):
        label, similarity = candidates[0] if candidates else (UNKNOWN, -1.0)
        score = open_set_score(gallery, label, similarity, kind)
        out.append(
            Recognition(path, label if score >= threshold else UNKNOWN, similarity, tuple(candidates), score=score)
        )
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


def _outcome(similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray, threshold: float) -> dict:
    """What a threshold does to the held-out queries."""
    accept, known = similarity >= threshold, ~unknown
    return {
        "threshold": float(threshold),
        "known_accepted": float(accept[known].mean()),
        "known_accuracy": float((accept & correct)[known].mean()),  # right label and accepted
        "unknown_rejected": float((~accept[unknown]).mean()) if unknown.any() else None,
    }


def _sweep(similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray):
    """Every distinct threshold worth trying (each similarity, and above all of them), with the
    share of known queries it accepts, of known queries it recognises, of unknowns it rejects."""
    candidates = np.unique(np.concatenate([similarity, [np.inf]]))

    def share_at_least(values: np.ndarray, total: int) -> np.ndarray:  # share of values >= each candidate
        return (len(values) - np.searchsorted(np.sort(values), candidates, side="left")) / max(total, 1)

    known = ~unknown
    accepted = share_at_least(similarity[known], known.sum())
    recognised = share_at_least(similarity[known & correct], known.sum())
    rejected = 1 - share_at_least(similarity[unknown], unknown.sum())
    return candidates, accepted, recognised, rejected


def _between(similarity: np.ndarray, candidates: np.ndarray, index: int) -> float:
    """Midway from the chosen similarity to the next lower one: the margin is shared, and no
    held-out query changes side."""
    lower = candidates[index - 1] if index > 0 else candidates[index] - 0.01
    return float((candidates[index] + lower) / 2) if np.isfinite(candidates[index]) else float(lower + 1e-6)


def _keeping(similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray, share: float) -> float:
    """Among thresholds keeping `share` of the known queries accepted: the one rejecting the
    most unknowns, and of those the one accepting the most known queries."""
    candidates, accepted, _, rejected = _sweep(similarity, correct, unknown)
    feasible = np.flatnonzero(accepted >= share - 1e-12)
    best = feasible[np.lexsort((-accepted[feasible], -rejected[feasible]))[0]]
    return _between(similarity, candidates, int(best))


def choose_threshold(
    similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray, *, keep_known: float = TARGET_ACCEPT
) -> dict:
    """The open-set threshold from held-out queries, under a stated constraint.

    similarity: each query's open-set score (open_set_score); correct: the best label is the true one (known
    queries); unknown: the query's label is not enrolled. With unknown queries: the highest
    threshold that keeps `keep_known` of the known queries accepted, which rejects as many
    unknowns as any threshold meeting that constraint can. (Maximising balanced open-set
    accuracy instead chose a threshold that accepted 6% of known images when known and unknown
    similarities overlapped, and nobody said so.) Without unknown queries, it keeps
    `keep_known` of the correct recognitions accepted. `tradeoff` holds the same figures for
    other constraints, and the threshold of best balanced accuracy, for the user to compare."""
    similarity = np.asarray(similarity, np.float64)
    correct, unknown = np.asarray(correct, bool), np.asarray(unknown, bool)
    known = ~unknown
    if not known.any():
        raise ValueError("calibration needs images of enrolled labels")
    if not 0 < keep_known <= 1:
        raise ValueError(f"keep_known is a share of known images, in (0, 1]; got {keep_known}")
    if unknown.any():
        method = f"keeps {keep_known:.0%} of known images accepted, then rejects as many unknown images as it can"
        threshold = _keeping(similarity, correct, unknown, keep_known)
    else:
        method = f"keeps {keep_known:.0%} of correct recognitions (no unknown images held out)"
        pool = similarity[known & correct] if (known & correct).any() else similarity[known]
        threshold = float(np.quantile(pool, 1 - keep_known))
    stats = {
        "method": method,
        "keep_known": keep_known,
        "known_images": int(known.sum()),
        "unknown_images": int(unknown.sum()),
        **_outcome(similarity, correct, unknown, threshold),
    }
    if unknown.any():
        stats["balanced_accuracy"] = (stats["known_accuracy"] + stats["unknown_rejected"]) / 2
        stats["tradeoff"] = _tradeoff(similarity, correct, unknown)
    return stats


TRADEOFF_SHARES = (1.0, 0.99, 0.95, 0.9, 0.8, 0.5)  # known images kept accepted, one table row each


def _tradeoff(similarity: np.ndarray, correct: np.ndarray, unknown: np.ndarray) -> list[dict]:
    """Rows of (constraint, threshold, known accepted and recognised, unknown rejected), and the
    row of best balanced open-set accuracy."""
    rows = [
        {"keep_known": share, **_outcome(similarity, correct, unknown, _keeping(similarity, correct, unknown, share))}
        for share in TRADEOFF_SHARES
    ]
    candidates, _, recognised, rejected = _sweep(similarity, correct, unknown)
    threshold = _between(similarity, candidates, int(np.argmax(recognised + rejected)))
    rows.append({"keep_known": "best balanced accuracy", **_outcome(similarity, correct, unknown, threshold)})
    return rows


# A calibrated point that turns away more known images than this is worth a warning.
MAX_KNOWN_REJECTED = 0.2


def calibrate(
    gallery: Gallery, queries: np.ndarray, true_labels: list[str], *, keep_known: float = TARGET_ACCEPT
) -> dict:
    """Choose and store the gallery's threshold from held-out queries with their true labels;
    labels the gallery does not have are the unknowns."""
    enrolled, kind = set(gallery.labels), score_kind(gallery)
    best = [cands[0] if cands else (UNKNOWN, -1.0) for cands in label_scores(gallery, queries, 1)]
    scores = np.array([open_set_score(gallery, lab, s, kind) for lab, s in best])
    correct = np.array([lab == truth for (lab, _), truth in zip(best, true_labels, strict=True)])
    unknown = np.array([truth not in enrolled for truth in true_labels])
    stats = {**choose_threshold(scores, correct, unknown, keep_known=keep_known), "score": kind}
    if 1 - stats["known_accepted"] > MAX_KNOWN_REJECTED:
        log.warning(
            "the calibrated threshold %.4f rejects %.0f%% of the known images as unknown (keeping %.0f%% "
            "was asked); the trade-off table shows what other thresholds keep and reject",
            stats["threshold"],
            100 * (1 - stats["known_accepted"]),
            100 * keep_known,
        )
    gallery.threshold, gallery.threshold_score, gallery.calibration = stats["threshold"], kind, stats
    return stats
