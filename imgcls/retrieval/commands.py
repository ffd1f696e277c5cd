"""The retrieval commands' work, shared by the command line and the server, and their text.

Each function takes the values it needs (never an argument namespace) and returns results;
cli.py only prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from imgcls.data.sources import find_split_folders, scan_class_folders
from imgcls.errors import DataError
from imgcls.inference.predictor import expand_paths
from imgcls.retrieval.cluster import (
    Clustering,
    cluster_embeddings,
    cluster_scores,
    folder_labels,
    write_assignments,
    write_contact_sheets,
)
from imgcls.retrieval.embed import EmbeddedPaths, Embedder
from imgcls.retrieval.gallery import Gallery, GalleryError, update_gallery
from imgcls.retrieval.recognize import TARGET_ACCEPT, Recognition, SearchResult, calibrate, recognize, search

log = logging.getLogger(__name__)


def open_gallery(folder: str | Path, checkpoint: str | Path | None = None) -> tuple[Gallery, Embedder]:
    """A gallery and the model it was built with (or `checkpoint`, which must be that model)."""
    gallery = Gallery.load(Path(folder))
    path = Path(checkpoint or gallery.model.get("checkpoint", ""))
    if not path.is_file():
        raise GalleryError(
            f"gallery {folder} was built with checkpoint {path}, which is not there any more; "
            "give its new location with --checkpoint."
        )
    embedder = Embedder.from_checkpoint(path)
    gallery.check_model(embedder, where=f"gallery {folder}")
    if checkpoint and str(Path(checkpoint).absolute()) != gallery.model.get("checkpoint"):
        gallery.model["checkpoint"] = embedder.source  # same weights, new place: remembered on save
    return gallery, embedder


def embed_arguments(embedder: Embedder, arguments: Sequence[str], *, absolute: bool = False) -> EmbeddedPaths:
    """Embeddings of files, folders (recursively) and globs, as `imgcls predict` finds them."""
    items = expand_paths(arguments)
    if not items:
        raise DataError(f"no images found in {' '.join(arguments)}.")
    if absolute:  # gallery paths outlive the working directory they were enrolled from
        items = [(str(path.absolute()), path) for _, path in items]
    return embedder.embed_paths(items)


def enrol(folder: str | Path, label: str, images: Sequence[str], checkpoint: str | None = None) -> tuple[int, list]:
    """Add images to a saved gallery under `label`: (images enrolled, unreadable files)."""
    gallery, embedder = open_gallery(folder, checkpoint)
    result = embed_arguments(embedder, images, absolute=True)
    if len(result.paths) == 0:
        raise DataError(f"none of the {len(result.errors)} image(s) could be read; nothing enrolled.")
    update_gallery(folder, lambda g: g.add(label, result.embeddings, result.paths))  # reads it again, locked
    return len(result.paths), result.errors


def held_out_images(data: Path) -> list[tuple[str, Path, str]]:
    """(shown path, file, true label) of a calibration set: DATA's class folders, or its val/
    (else test/) when DATA is a train/val/test root."""
    data = Path(data)
    split = find_split_folders(data) if data.is_dir() else None
    root = (split["val"] or split["test"]) if split else data
    if root is None:
        raise DataError(f"{data} has train/ but no val/ or test/ to calibrate on; give held-out class folders.")
    found = [(str(p.absolute()), p, label) for label, paths in scan_class_folders(root).items() for p in paths]
    if not found:
        raise DataError(f"{root} holds no class folders with images to calibrate on.")
    return found


def calibrate_gallery(
    folder: str | Path, data: str | Path, checkpoint: str | None = None, *, keep_known: float = TARGET_ACCEPT
) -> dict:
    """Choose the open-set threshold on held-out labelled images and store it in the gallery."""
    gallery, embedder = open_gallery(folder, checkpoint)
    enrolled = set(gallery.paths)
    images = held_out_images(Path(data))
    held_out = [item for item in images if item[0] not in enrolled]
    if len(held_out) < len(images):
        log.warning(
            "%d calibration image(s) are enrolled in the gallery and were left out", len(images) - len(held_out)
        )
    if not held_out:
        raise DataError(f"every image of {data} is enrolled in the gallery; calibrate on images it does not hold.")
    result = embedder.embed_paths([(shown, path) for shown, path, _ in held_out], desc="calibrate")
    truth = {shown: label for shown, _, label in held_out}
    if not any(truth[p] in set(gallery.labels) for p in result.paths):
        raise DataError(f"no image of {data} has a label the gallery holds; calibration needs some that it does.")
    stats = calibrate(gallery, result.embeddings, [truth[p] for p in result.paths], keep_known=keep_known)
    gallery.save(Path(folder))
    return stats


def recognize_arguments(
    folder: str | Path, images: Sequence[str], *, topk: int = 3, checkpoint: str | None = None
) -> list[Recognition]:
    gallery, embedder = open_gallery(folder, checkpoint)
    result = embed_arguments(embedder, images)
    found = recognize(gallery, result.embeddings, result.paths, topk=topk)
    return found + [Recognition(e["path"], error=e["error"]) for e in result.errors]


def search_arguments(
    folder: str | Path, images: Sequence[str], *, k: int = 10, index: str | None = None, checkpoint: str | None = None
) -> list[SearchResult]:
    gallery, embedder = open_gallery(folder, checkpoint)
    if index and index != gallery.index_kind:
        gallery.index_kind, gallery._index = index, None  # this query only; the stored choice stays
    result = embed_arguments(embedder, images)
    found = search(gallery, result.embeddings, result.paths, k=k)
    return found + [SearchResult(e["path"], error=e["error"]) for e in result.errors]


def cluster_arguments(
    embedder: Embedder,
    arguments: Sequence[str],
    out: Path,
    *,
    k: int | None = None,
    min_cluster_size: int = 5,
    seed: int = 0,
) -> Clustering:
    """Embed, cluster, write out/clusters.csv and a contact sheet per cluster; purity and NMI
    when the images lie in class folders."""
    result = embed_arguments(embedder, arguments)
    assignments, method = cluster_embeddings(result.embeddings, k=k, min_cluster_size=min_cluster_size, seed=seed)
    labels = folder_labels(list(arguments), result.paths)
    clustering = Clustering(assignments, method, cluster_scores(labels, assignments) if labels else None)
    write_assignments(Path(out) / "clusters.csv", result.paths, clustering, labels)
    write_contact_sheets(Path(out), [Path(p) for p in result.paths], clustering)
    return clustering


def describe_gallery(info: dict, folder: str | Path) -> str:
    """`gallery info` and `gallery build` as text."""
    model = info["model"]
    lines = [
        f"gallery {folder}: {info['images']:,} image(s), {len(info['labels'])} label(s), "
        f"{info['dim']}-d {info['dtype']} embeddings, index {info['index']} (uses {info['index_used']})",
        f"model: {model.get('name')} from {model.get('checkpoint')} (identity {str(model.get('identity'))[:12]})",
    ]
    threshold = info["threshold"]
    if threshold is None:
        lines.append("threshold: none (every query gets its nearest label; `imgcls gallery calibrate` sets one)")
    else:
        cal = info["calibration"] or {}
        rejected = cal.get("unknown_rejected")
        lines.append(
            f"threshold: {SCORE_NAMES[info['threshold_score']]} {threshold:.4f} ({cal.get('method', 'set by hand')}; "
            f"known accuracy "
            f"{cal.get('known_accuracy', float('nan')):.3f}"
            + (f", unknown rejected {rejected:.3f})" if rejected is not None else ")")
        )
    lines += [f"  {label}: {count:,}" for label, count in info["labels"].items()]
    return "\n".join(lines)


SCORE_NAMES = {"similarity": "similarity", "standardised": "standardised similarity"}


def describe_calibration(stats: dict) -> str:
    line = (
        f"threshold: {SCORE_NAMES[stats.get('score', 'similarity')]} {stats['threshold']:.4f} ({stats['method']}): "
        f"on {stats['known_images']} known image(s) "
        f"{stats['known_accuracy']:.3f} recognised and accepted, {stats['known_accepted']:.3f} accepted"
    )
    if stats["unknown_rejected"] is None:
        return line
    line += f"; {stats['unknown_rejected']:.3f} of {stats['unknown_images']} unknown image(s) rejected"
    rows = [
        f"{'keeps known':>22}  {'threshold':>9}  {'known accepted':>14}  {'recognised':>10}  {'unknown rejected':>16}"
    ]
    for row in stats.get("tradeoff", []):
        keep = row["keep_known"]
        name = f"{keep:.0%}" if isinstance(keep, float) else keep
        rows.append(
            f"{name:>22}  {row['threshold']:9.4f}  {row['known_accepted']:14.3f}  {row['known_accuracy']:10.3f}"
            f"  {row['unknown_rejected']:16.3f}"
        )
    return "\n".join([line, "trade-off on the held-out images (--keep-known chooses the row):", *rows])
