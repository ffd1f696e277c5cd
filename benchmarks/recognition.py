"""Recognition without retraining: a classifier of 8 Fashion-MNIST classes enrols the other 2 from 5 images each.

Model: `imgcls train fm-8seen/train --recipe fashion-mnist --epochs 6 --val-fraction 0.1
--seed 0 --allow-outside` (small-net width 48, 28 px), where fm-8seen/train holds the 48,000 training images
of every class but Bag and Ankle boot (symlinks to fashion-mnist/train/). A finished run is
reused; --retrain trains it again. Everything else is measured in this process with
imgcls.retrieval on the embeddings (pooled pre-logit features, 192-d, L2-normalised, whitened
with the checkpoint's whitening: imgcls.models.whitening) of the 60,000 training and 10,000
test images; the goal figures are measured again without the whitening, for comparison:

1. Recognition (no threshold), by prototype (a label's mean embedding) and by nearest image:
   a gallery of G training images per seen class (G = 5, 100, 6000) plus 5 training images
   of each unseen class, drawn 5 times (numpy seeds 0-4); accuracy on the 2,000 test images
   of the unseen classes (and each of them) and the 8,000 of the seen ones, mean and std over
   the draws. The classifier's own head on the seen test images for reference.
2. Open set: gallery of 100 per seen class + 5 of one unseen class; the other unseen class is
   never enrolled. A threshold by `gallery calibrate`'s rule (no unknowns to calibrate on: keep
   95% of correct recognitions) on the seen-class images of a seeded half of the test set; on
   the other half, AUROC of "unknown" (score: minus the open-set score `imgcls recognize` compares
   with the threshold, imgcls.retrieval.recognize.open_set_score; also by the bare similarity)
   and the threshold's effect. Both for prototype and nearest-image scoring.
3. Search on the test set, each image querying the other 9,999 (same class = relevant):
   Recall@10 (a relevant image among the first 10), precision@10, mAP over the full ranking.
4. Latency: exact (numpy) vs FAISS flat / IVF / HNSW at 10k (the test embeddings) and 1M
   vectors (synthetic: each test embedding plus 99 Gaussian perturbations, sigma 0.02 per
   dimension, renormalised): build seconds, one query (median of 100), 1,000 queries in one
   call, recall@10 against exact. HNSW at 1M only with --hnsw-1m (its build takes minutes).
5. Clustering the 10,000 test embeddings: k-means with k = 10 (purity, NMI) and HDBSCAN.

With --loss arcface (cosface, subcenter-arcface) the same script also trains the embedding
model of issue 21, `imgcls train ... --loss arcface` (the same recipe, epochs, data and seed:
small-net, a 128-d linear + batch-norm neck, a cosine classifier, the margin in the loss), and
measures both models on the same images and draws (sections 1-3 and 5; latency depends on the
number of vectors, not the model), then prints the issue's goals next to both.

Timings share 2 CPU cores with other work and are noisy.

    .venv/bin/python benchmarks/recognition.py [--retrain] [--hnsw-1m] [--loss arcface] [--epochs 6]
        [--set train.instance_contrast=0.5 ...]   # settings of the embedding model's run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from fashion_mnist import fashion_mnist
from transfer import DATA, RUNS, imgcls

SEEN = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker")
UNSEEN = ("Bag", "Ankle boot")
SHOTS, DRAWS = 5, 5
RUN = RUNS / "recognition-8class-small-net"
# --allow-outside: fm-8seen's class folders are links into fashion-mnist/
TRAIN = ["--recipe", "fashion-mnist", "--epochs", "6", "--val-fraction", "0.1", "--seed", "0", "--allow-outside"]


def seen_folder() -> Path:
    """fm-8seen/train: links to the 8 seen classes of Fashion-MNIST's PNGs (written once)."""
    fashion_mnist()  # DATA/fashion-mnist, where the links lead
    root = DATA / "fm-8seen" / "train"
    root.mkdir(parents=True, exist_ok=True)
    for name in SEEN:
        link = root / name
        if not link.exists():
            link.symlink_to(Path("..", "..", "fashion-mnist", "train", name))
    return root


def embed_all(embedder, images: np.ndarray) -> np.ndarray:
    pixels = images[..., None]
    if embedder.preprocessing.channels == 3:
        pixels = np.repeat(pixels, 3, axis=-1)
    return embedder.embed(pixels)


class LazyEmbeddings:
    """--quick: the training images' embeddings, computed the first time a row is asked for
    (the galleries of 5 and 100 images per class need ~4,500 of the 60,000)."""

    def __init__(self, embedder, images: np.ndarray):
        self.embedder, self.images, self.done = embedder, images, {}

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        missing = sorted(set(rows.tolist()) - self.done.keys())
        if missing:
            self.done.update(zip(missing, embed_all(self.embedder, self.images[missing]), strict=True))
        return np.stack([self.done[r] for r in rows.tolist()])


def check_png_path(embedder, test_x: np.ndarray, test_emb: np.ndarray) -> float:
    """Largest difference between embeddings of the test PNGs (as `imgcls embed` reads them)
    and of the arrays this script embeds; the PNG folders' order is not the arrays' order, so
    each PNG is compared with its nearest array embedding."""
    folder = DATA / "fashion-mnist" / "test" / "Bag"
    files = sorted(folder.iterdir())[:100]
    from_png = embedder.embed_paths([(str(p), p) for p in files]).embeddings
    return float(1 - (from_png @ test_emb.T).max(axis=1).min())


def recognition(gallery_x, gallery_y, query_x, query_y, classes, by):
    """(correct, similarity, open-set score) per query: the best label's, as `imgcls recognize`
    finds them (imgcls.retrieval.recognize)."""
    from imgcls.retrieval.gallery import Gallery
    from imgcls.retrieval.recognize import label_scores, open_set_score, score_kind

    labels = [classes[i] for i in gallery_y]
    gallery = Gallery(
        gallery_x, labels, [""] * len(labels), {"identity": "benchmark"}, index_kind="exact", recognition=by
    )
    best = label_scores(gallery, query_x, 1)
    predicted = np.array([c[0][0] for c in best])
    similarity = np.array([c[0][1] for c in best])
    kind = score_kind(gallery)
    score = np.array([open_set_score(gallery, c[0][0], c[0][1], kind) for c in best])
    return predicted == np.array([classes[i] for i in query_y]), similarity, score


def recognition_table(train_emb, train_y, test_emb, test_y, classes, unseen_ids, sizes=(5, 100, 6000)) -> dict:
    """Prints the table; {(by, seen images per class): {group: mean accuracy}}."""
    table = {}
    seen_ids = [i for i in range(10) if i not in unseen_ids]
    groups = {"unseen": np.isin(test_y, unseen_ids), "seen": np.isin(test_y, seen_ids)}
    groups |= {classes[c]: test_y == c for c in unseen_ids}
    print(f"\n1. recognition: {SHOTS} images per unseen class, {DRAWS} draws, accuracy mean ± std")
    print(f"{'by':10s} {'seen imgs/class':>15s}" + "".join(f" {name:>17s}" for name in groups))
    for by, per_seen in [(by, n) for by in ("prototype", "nearest") for n in sizes]:
        scores = {name: [] for name in groups}
        for draw in range(DRAWS):
            rng = np.random.default_rng(draw)
            picks = [
                rng.permutation(np.flatnonzero(train_y == c))[: SHOTS if c in unseen_ids else per_seen]
                for c in range(10)
            ]
            rows = np.concatenate(picks)
            correct, _, _ = recognition(train_emb[rows], train_y[rows], test_emb, test_y, classes, by)
            for name, mask in groups.items():
                scores[name].append(correct[mask].mean())
        cells = "".join(f" {np.mean(v):8.4f} ± {np.std(v):.4f}" for v in scores.values())
        print(f"{by:10s} {per_seen:15d}{cells}")
        table[(by, per_seen)] = {name: float(np.mean(v)) for name, v in scores.items()}
    return table


def open_set(train_emb, train_y, test_emb, test_y, classes, unseen_ids) -> dict:
    """Prints the rows; {(by, never-enrolled class): AUROC}."""
    aurocs = {}
    from sklearn.metrics import roc_auc_score

    from imgcls.retrieval.recognize import choose_threshold

    # Half of the test set (seeded) calibrates the threshold, with its images of the 8 seen
    # classes only (a user has no images of a class nobody enrolled); the other half measures.
    half = np.zeros(len(test_y), bool)
    half[np.random.default_rng(0).permutation(len(test_y))[: len(test_y) // 2]] = True
    cal = half & ~np.isin(test_y, unseen_ids)
    measure = ~half
    print("\n2. open set: 100 per seen class + 5 of one unseen class enrolled; the other never enrolled")
    print(f"   threshold from {cal.sum()} test images of the seen classes; measured on the other {measure.sum()}")
    for by, (enrolled, never) in [
        (by, pair) for by in ("prototype", "nearest") for pair in (unseen_ids, unseen_ids[::-1])
    ]:
        rng = np.random.default_rng(0)
        picks = []
        for c in range(10):
            if c != never:
                picks.append(rng.permutation(np.flatnonzero(train_y == c))[: SHOTS if c == enrolled else 100])
        rows = np.concatenate(picks)
        correct, similarity, score = recognition(train_emb[rows], train_y[rows], test_emb, test_y, classes, by)
        stats = choose_threshold(score[cal], correct[cal], np.zeros(cal.sum(), bool))
        known, unknown = measure & (test_y != never), measure & (test_y == never)
        auroc = roc_auc_score(unknown[measure], -score[measure])
        by_similarity = roc_auc_score(unknown[measure], -similarity[measure])  # the score before the standardised one
        aurocs[(by, classes[never])] = float(auroc)
        accept = score >= stats["threshold"]
        print(
            f"{by}: enrolled {classes[enrolled]!r}, never enrolled {classes[never]!r}: AUROC of unknown {auroc:.4f} "
            f"(by the bare similarity {by_similarity:.4f}); "
            f"threshold {stats['threshold']:.4f}: known images recognised and accepted "
            f"{(correct & accept)[known].mean():.4f} (accepted {accept[known].mean():.4f}), never-enrolled "
            f"rejected {(~accept[unknown]).mean():.4f}, enrolled-unseen recognised and accepted "
            f"{(correct & accept)[measure & (test_y == enrolled)].mean():.4f}"
        )
    return aurocs


def search_quality(test_emb, test_y, unseen_ids) -> float:
    """Prints the rows; Recall@10 over all 10 classes."""
    print("\n3. search on the test set, every image against the other 9,999 (same class = relevant)")
    hits, precision, ap = [], [], []
    for start in range(0, len(test_emb), 500):
        sims = test_emb[start : start + 500] @ test_emb.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf  # not itself
        order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]
        relevant = test_y[order] == test_y[start : start + 500, None]
        hits.append(relevant[:, :10].any(1))
        precision.append(relevant[:, :10].mean(1))
        ranks = np.arange(1, relevant.shape[1] + 1)
        ap.append((np.cumsum(relevant, 1) / ranks * relevant).sum(1) / relevant.sum(1))
    hits, precision, ap = np.concatenate(hits), np.concatenate(precision), np.concatenate(ap)
    unseen = np.isin(test_y, unseen_ids)
    for name, mask in (("all 10 classes", np.ones_like(unseen)), ("2 unseen classes", unseen), ("8 seen", ~unseen)):
        print(
            f"{name:18s} Recall@10 {hits[mask].mean():.4f}  precision@10 {precision[mask].mean():.4f}  "
            f"mAP {ap[mask].mean():.4f}"
        )
    return float(hits.mean())


def latency(vectors: np.ndarray, kinds: list[str], label: str) -> None:
    from imgcls.retrieval.index import build_index

    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(len(vectors), 1000, replace=False)] + 0.01 * rng.standard_normal(
        (1000, vectors.shape[1])
    )
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = None
    print(f"\n4. latency, {label}: {len(vectors):,} x {vectors.shape[1]} vectors, k = 10")
    print(f"{'index':8s} {'build s':>8s} {'1 query ms':>11s} {'1000 queries ms/query':>22s} {'recall@10':>10s}")
    for kind in kinds:
        start = time.perf_counter()
        index = build_index(vectors, kind)
        built = time.perf_counter() - start
        single = []
        for q in queries[:100]:
            start = time.perf_counter()
            index.search(q[None], 10)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        ids = index.search(queries, 10)[1]
        batch = (time.perf_counter() - start) / len(queries)
        truth = ids if kind == "exact" else truth
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
        print(f"{kind:8s} {built:8.2f} {1000 * np.median(single):11.3f} {1000 * batch:22.4f} {recall:10.4f}")
        del index


def synthetic(test_emb: np.ndarray, copies: int = 100, sigma: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((len(test_emb) * copies, test_emb.shape[1]), np.float32)
    for c in range(copies):
        block = test_emb + (sigma * rng.standard_normal(test_emb.shape) if c else 0)
        out[c * len(test_emb) : (c + 1) * len(test_emb)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustering(test_emb, test_y) -> None:
    from imgcls.retrieval.cluster import cluster_embeddings, cluster_scores

    print("\n5. clustering the 10,000 test embeddings")
    for k, size in ((10, None), (None, 50)):
        start = time.perf_counter()
        assignments, method = cluster_embeddings(test_emb, k=k, min_cluster_size=size or 5)
        s = cluster_scores(list(test_y), assignments)
        found = len(set(assignments) - {-1})
        print(
            f"{method}: {found} clusters, purity {s['purity']:.4f}, NMI {s['nmi']:.4f}, "
            f"{s['outliers']} outliers, {time.perf_counter() - start:.1f} s"
        )


def measure(
    run: Path, label: str, quality_only: bool, hnsw_1m: bool = False, quick: bool = False, whiten: bool = True
) -> dict:
    """Sections 1-5 (1-3 and 5 with quality_only) for one run's best checkpoint; the goal figures.
    quick: without mirror test-time augmentation, galleries of 5 and 100 images per known class
    only (their rows embedded on demand), no classifier-head pass and no clustering. whiten=False:
    the features without the checkpoint's whitening (imgcls.models.whitening), for comparison."""
    from imgcls.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
    from imgcls.inference.predictor import Predictor
    from imgcls.retrieval.embed import Embedder

    print(f"\n======== {label}: {run.name}")
    checkpoint = run / "best.safetensors"
    classes = [name.replace("/", "_") for name in FASHION_MNIST_CLASSES]  # as the class folders spell them
    unseen_ids = [classes.index(name) for name in UNSEEN]
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    embedder = Embedder.from_checkpoint(checkpoint)
    if not whiten:
        embedder.whitening = None
    if quick:
        embedder.preprocessing = dataclasses.replace(embedder.preprocessing, test_flip=False)
        train_emb, test_emb = LazyEmbeddings(embedder, train_x), embed_all(embedder, test_x)
        table = recognition_table(train_emb, train_y, test_emb, test_y, classes, unseen_ids, sizes=(5, 100))
        aurocs = open_set(train_emb, train_y, test_emb, test_y, classes, unseen_ids)
        recall = search_quality(test_emb, test_y, unseen_ids)
        return goal_figures(table, aurocs, recall, json.loads((run / "metrics.json").read_text())["accuracy"])
    suffix = "" if embedder.whitening is None else "-whitened"
    cache = DATA / f"recognition-embeddings-{embedder.identity[:16]}{suffix}.npz"  # keyed by the model's identity
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            train_emb, test_emb = saved["train"], saved["test"]
        print(f"embeddings of this model from {cache.name}")
    else:
        start = time.perf_counter()
        train_emb, test_emb = embed_all(embedder, train_x), embed_all(embedder, test_x)
        seconds = time.perf_counter() - start
        print(f"embedded 70,000 images ({train_emb.shape[1]}-d) in {seconds:.1f} s ({70000 / seconds:,.0f} img/s)")
        np.savez(cache, train=train_emb, test=test_emb)
    print(f"PNG path vs arrays: largest 1 - cosine {check_png_path(embedder, test_x, test_emb):.2e} (100 Bag PNGs)")

    predictor = Predictor.from_checkpoint(checkpoint)
    seen_rows = np.flatnonzero(~np.isin(test_y, unseen_ids))
    pixels = test_x[seen_rows][..., None]
    if predictor.preprocessing.channels == 3:
        pixels = np.repeat(pixels, 3, axis=-1)
    head = np.array(predictor.classes)[predictor.probabilities(pixels).argmax(1)]
    head_acc = (head == np.array(classes)[test_y[seen_rows]]).mean()
    print(f"the classifier's own head on the 8,000 seen test images: accuracy {head_acc:.4f}")

    table = recognition_table(train_emb, train_y, test_emb, test_y, classes, unseen_ids)
    aurocs = open_set(train_emb, train_y, test_emb, test_y, classes, unseen_ids)
    recall = search_quality(test_emb, test_y, unseen_ids)
    if not quality_only:
        latency(test_emb, ["exact", "flat", "ivf", "hnsw"], "the test embeddings")
        del train_emb
        big = synthetic(test_emb)
        latency(big, ["exact", "flat", "ivf"] + (["hnsw"] if hnsw_1m else []), "synthetic")
        del big
    clustering(test_emb, test_y)
    return goal_figures(table, aurocs, recall, float(head_acc), "head on known test images")


def goal_figures(table: dict, aurocs: dict, recall: float, head: float, head_name: str = "head on val images") -> dict:
    goal_row = table[("prototype", 100)]
    return {
        "new classes": goal_row["unseen"],
        "known classes": goal_row["seen"],
        **{f"AUROC, {name} never enrolled": aurocs[("prototype", name)] for name in UNSEEN},
        "search Recall@10": recall,
        head_name: head,
    }


# The goals for the embedding model, on the rows above: prototype scoring with 100
# images per known class and 5 of each new one (mean of the 5 draws); open set by prototype.
GOALS = {
    "new classes": 0.85,
    "known classes": 0.90,
    "AUROC, Bag never enrolled": 0.90,
    "AUROC, Ankle boot never enrolled": 0.90,
    "search Recall@10": 0.98,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train the 8-class model(s) again")
    parser.add_argument("--hnsw-1m", action="store_true", help="also build HNSW over 1M vectors (minutes)")
    parser.add_argument(
        "--loss",
        choices=["arcface", "cosface", "subcenter-arcface", "supcon"],
        help="also train an embedding model with this margin loss and compare it with the classifier "
        "(sections 1-3 and 5 for both; latency is skipped: it depends on the vectors' number, not the model)",
    )
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of both models (6)")
    parser.add_argument("--quick", action="store_true", help="only the goals' figures, without mirror TTA")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of the embedding model's run only"
    )
    args = parser.parse_args()
    from imgcls.checkpoint import read_metadata

    train = [*TRAIN, "--epochs", str(args.epochs)]  # the last --epochs wins
    base = RUN if args.epochs == 6 else RUN.with_name(f"{RUN.name}-{args.epochs}ep")
    runs = [(base, "classifier (cross-entropy)", train)]
    if args.loss:
        settings = [flag for setting in args.set for flag in ("--set", setting)]
        # its own run folder: train.instance_contrast=0.5 -> -instance_contrast_0_5
        suffix = "".join("-" + re.sub(r"[^A-Za-z0-9]+", "_", setting.split(".", 1)[-1]) for setting in args.set)
        runs.append(
            (
                base.with_name(f"{base.name}-{args.loss}{suffix}"),
                f"embedding model ({args.loss})",
                [*train, "--loss", args.loss, *settings],
            )
        )
    for run, _, flags in runs:
        if args.retrain or not (run / "best.safetensors").is_file():
            shutil.rmtree(run, ignore_errors=True)
            seconds, _ = imgcls("train", seen_folder(), *flags, "--out", run)
            print(f"trained {run.name} in {seconds:.0f} s")
    columns, figures = [], []
    for run, label, _ in runs:
        figures.append(measure(run, label, bool(args.loss), args.hnsw_1m, args.quick))
        columns.append(label.split(" (")[0])
        if "whitening" in read_metadata(run / "best.safetensors"):  # the baseline, in the same run
            figures.append(measure(run, f"{label}, not whitened", True, quick=args.quick, whiten=False))
            columns.append(f"{columns[-1]}, not whitened")
    print("\n======== the goals (prototype scoring, 100 images per known class, 5 per new class, 5 draws)")
    print(f"{'':34s} {'goal':>6s}" + "".join(f" {column:>30s}" for column in columns))
    for name in figures[0]:
        goal = f">={GOALS[name]:.2f}" if name in GOALS else "ref."
        print(f"{name:34s} {goal:>6s}" + "".join(f" {f[name]:30.4f}" for f in figures))


if __name__ == "__main__":
    main()
