"""Sorting unlabeled images: clusters of embeddings, a CSV of assignments, contact sheets.

k-means (scikit-learn) when the number of clusters is known; HDBSCAN (scikit-learn's) when it
is not: it finds clusters of varying density by itself and leaves outliers unassigned (-1).
On unit vectors, Euclidean distance is a monotone function of cosine similarity
(|a - b|^2 = 2 - 2 a.b), so both methods cluster by similarity.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgcls.data.decode import decode_image
from imgcls.data.sources import class_name
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NOISE = -1
THUMB = 64  # px per contact-sheet thumbnail
SHEET_COLUMNS = 10
SHEET_MAX_IMAGES = 100  # per cluster: a sheet shows the cluster, it is not an archive of it


@dataclass(frozen=True)
class Clustering:
    assignments: np.ndarray  # (N,) cluster id per image, NOISE for HDBSCAN's outliers
    method: str
    scores: dict | None = None  # purity and NMI against folder labels, when the images have them

    def sizes(self) -> dict[int, int]:
        ids, counts = np.unique(self.assignments, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def cluster_embeddings(embeddings: np.ndarray, *, k: int | None = None, min_cluster_size: int = 5, seed: int = 0):
    """Cluster ids of unit-vector embeddings: k-means with k clusters, else HDBSCAN."""
    if len(embeddings) < 2:
        raise ConfigError(f"clustering needs at least 2 images, not {len(embeddings)}.")
    if k is not None:
        from sklearn.cluster import KMeans

        if not 1 <= k <= len(embeddings):
            raise ConfigError(f"--k must be between 1 and the number of images ({len(embeddings)}), not {k}.")
        model = KMeans(n_clusters=k, n_init=4, random_state=seed)
        return model.fit_predict(embeddings).astype(np.int64), f"k-means (k={k})"
    from sklearn.cluster import HDBSCAN

    size = max(2, min(min_cluster_size, len(embeddings)))
    assignments = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(embeddings).astype(np.int64)
    return assignments, f"HDBSCAN (min cluster size {size})"


def cluster_scores(true_labels: list[str], assignments: np.ndarray) -> dict:
    """Purity (each cluster counted as its majority label; outliers as wrong) and NMI."""
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(true_labels, assignments)  # rows labels, columns clusters (sorted ids)
    columns = np.unique(assignments)
    clustered = table[:, columns != NOISE]
    return {
        "purity": float(clustered.max(axis=0).sum() / len(assignments)) if clustered.size else 0.0,
        "nmi": float(normalized_mutual_info_score(true_labels, assignments)),
        "labels": len(set(true_labels)),
        "outliers": int((assignments == NOISE).sum()),
    }


def folder_labels(arguments: list[str], shown_paths: list[str]) -> list[str] | None:
    """Each image's folder name when every image lies in a sub-folder of a folder argument
    (class folders); None when some image has no such folder, or all share one."""
    labels = []
    roots = [Path(a) for a in arguments if Path(a).is_dir()]
    for shown in shown_paths:
        path = Path(shown)
        root = next((r for r in roots if path.parent != r and r in path.parents), None)
        if root is None:
            return None
        labels.append(class_name(Path(*path.relative_to(root).parts[:1])))
    return labels if len(set(labels)) >= 2 else None


def write_assignments(path: Path, shown_paths: list[str], clustering: Clustering, labels: list[str] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "cluster"] + (["folder"] if labels else []))
        for i, shown in enumerate(shown_paths):
            writer.writerow([shown, int(clustering.assignments[i])] + ([labels[i]] if labels else []))


def contact_sheet(images: list[Path], title: str) -> Image.Image:
    """A grid of thumbnails under a one-line title; unreadable files are grey squares."""
    rows = max(1, -(-len(images) // SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * THUMB, rows * THUMB + 20), "white")
    ImageDraw.Draw(sheet).text((4, 4), title, fill="black")
    for n, path in enumerate(images):
        try:  # through decode_image: regular files only, size and pixel limits, as everywhere
            thumb = Image.fromarray(decode_image(path, channels=3))
            thumb.thumbnail((THUMB, THUMB))
        except DataError:
            thumb = Image.new("RGB", (THUMB, THUMB), "grey")
        x, y = (n % SHEET_COLUMNS) * THUMB, 20 + (n // SHEET_COLUMNS) * THUMB
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
    return sheet


def write_contact_sheets(out: Path, files: list[Path], clustering: Clustering) -> list[Path]:
    """out/cluster-ID.png per cluster (outliers as cluster-outliers.png), up to SHEET_MAX_IMAGES each."""
    written = []
    for cluster, size in clustering.sizes().items():
        members = [files[i] for i in np.flatnonzero(clustering.assignments == cluster)[:SHEET_MAX_IMAGES]]
        name = "outliers" if cluster == NOISE else f"{cluster:03d}"
        shown = f" (first {len(members)})" if size > len(members) else ""
        sheet = contact_sheet(members, f"cluster {name}: {size} image(s){shown}")
        target = out / f"cluster-{name}.png"
        sheet.save(target)
        written.append(target)
    return written


def describe_clustering(clustering: Clustering, out: Path) -> str:
    sizes = clustering.sizes()
    found = sum(1 for c in sizes if c != NOISE)
    lines = [f"{clustering.method}: {found} cluster(s) of {len(clustering.assignments)} image(s)"]
    if NOISE in sizes:
        lines[0] += f", {sizes[NOISE]} outlier(s)"
    lines.append("sizes: " + ", ".join(f"{'outliers' if c == NOISE else c}: {n}" for c, n in sizes.items()))
    if clustering.scores:
        s = clustering.scores
        lines.append(f"against the {s['labels']} folder labels: purity {s['purity']:.4f}, NMI {s['nmi']:.4f}")
    lines.append(f"assignments: {out / 'clusters.csv'}; contact sheets: {out}/cluster-*.png")
    return "\n".join(lines)
