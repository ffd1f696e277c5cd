"""Embeddings, galleries, indexes, thresholds and clustering, on a tiny model and generated images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.retrieval.cluster import cluster_embeddings, cluster_scores, folder_labels
from imgcls.retrieval.commands import open_gallery
from imgcls.retrieval.embed import Embedder
from imgcls.retrieval.gallery import Gallery, GalleryError, build_gallery
from imgcls.retrieval.index import build_index, choose_kind
from imgcls.retrieval.recognize import UNKNOWN, calibrate, choose_threshold, label_scores, recognize
from tests.helpers import CLASS_COLOURS, make_class_folders, tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Three colour classes with junk files, and the shared tiny model (trained on two of them)."""
    data = make_class_folders(tmp_path_factory.mktemp("retrieval") / "data", per_class=12)
    return data, tiny_model()["checkpoint"]


@pytest.fixture(scope="module")
def embedder(trained) -> Embedder:
    return Embedder.from_checkpoint(trained[1])


def _other_checkpoint(source: Path, target: Path) -> Path:
    """The same architecture and metadata with one weight changed: another model."""
    tensors, meta = ckpt.load_checkpoint(source)
    name = next(k for k in tensors if tensors[k].is_floating_point())  # either tensor naming
    tensors[name] = tensors[name] + 0.01
    ckpt.save_checkpoint(target, tensors, {k: v for k, v in meta.items() if k not in ("schema", "imgcls_version")})
    return target


def test_embeddings_are_unit_vectors_of_the_pre_logit_width(trained, embedder):
    data, _ = trained
    items = [(str(p), p) for p in sorted(data.rglob("*")) if p.is_file()]
    result = embedder.embed_paths(items)
    readable = 3 * 12  # broken.png and empty.jpg are reported, notes.txt and .DS_Store too
    assert (
        result.embeddings.shape == (readable, embedder.network.num_features) and result.embeddings.dtype == np.float32
    )
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert {Path(e["path"]).name for e in result.errors} >= {"broken.png", "empty.jpg"}
    again = embedder.embed_paths(items[:5])
    good = [i for i, (shown, _) in enumerate(items[:5]) if shown in again.paths]
    np.testing.assert_allclose(again.embeddings, result.embeddings[good], atol=1e-6)  # same images, same vectors


def test_identity_follows_the_weights_not_the_file(trained, embedder, tmp_path):
    _, checkpoint = trained
    copy = shutil.copy(checkpoint, tmp_path / "copy.safetensors")
    assert Embedder.from_checkpoint(copy).identity == embedder.identity
    other = _other_checkpoint(checkpoint, tmp_path / "other.safetensors")
    assert Embedder.from_checkpoint(other).identity != embedder.identity


def test_gallery_round_trip_add_remove_reload(trained, embedder, tmp_path):
    data, _ = trained
    gallery = build_gallery(embedder, data)
    assert gallery.counts() == {name: 12 for name in sorted(CLASS_COLOURS)}
    folder = tmp_path / "gallery"
    gallery.save(folder)
    loaded = Gallery.load(folder)
    np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
    assert loaded.labels == gallery.labels and loaded.paths == gallery.paths and loaded.model == gallery.model

    extra = make_class_folders(tmp_path / "extra", per_class=3, seed=9, junk=False) / "bird"
    new = embedder.embed_paths([(str(p), p) for p in sorted(extra.iterdir())])
    loaded.add("new bird", new.embeddings, new.paths)
    loaded.save(folder)
    assert Gallery.load(folder).counts()["new bird"] == 3
    assert loaded.remove("bird") == 12
    loaded.save(folder)
    again = Gallery.load(folder)
    assert "bird" not in again.counts() and again.counts()["new bird"] == 3 and len(again) == 12 + 12 + 3
    with pytest.raises(GalleryError, match="no label"):
        again.remove("bird")


def test_float16_storage_halves_the_file_and_keeps_the_neighbours(trained, embedder, tmp_path):
    gallery = build_gallery(embedder, trained[0], dtype="float16")
    gallery.save(tmp_path / "g16")
    stored = np.load(tmp_path / "g16" / "embeddings.npy", allow_pickle=False)
    assert stored.dtype == np.float16
    loaded = Gallery.load(tmp_path / "g16")
    np.testing.assert_allclose(loaded.embeddings, gallery.embeddings, atol=2e-3)
    ids16 = loaded.search(gallery.embeddings[:6], 1)[1][:, 0]
    assert list(ids16) == list(range(6))  # each image still finds itself first


def test_wrong_model_is_refused(trained, embedder, tmp_path, capsys):
    _, checkpoint = trained
    build_gallery(embedder, trained[0]).save(tmp_path / "gallery")
    other = _other_checkpoint(checkpoint, tmp_path / "other.safetensors")
    with pytest.raises(GalleryError, match="same checkpoint"):
        open_gallery(tmp_path / "gallery", other)
    image = str(next((trained[0] / "bird").iterdir()))
    capsys.readouterr()
    assert main(["-q", "recognize", str(tmp_path / "gallery"), image, "--checkpoint", str(other)]) == 2
    assert "was built with checkpoint" in capsys.readouterr().err


def test_an_interrupted_write_is_detected(trained, embedder, tmp_path):
    folder = tmp_path / "gallery"
    build_gallery(embedder, trained[0]).save(folder)
    items = json.loads((folder / "items.json").read_text(encoding="utf-8"))
    items["labels"].pop()
    (folder / "items.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(GalleryError, match="interrupted"):
        Gallery.load(folder)


def _blobs(rng, centres: np.ndarray, per: int, noise: float) -> np.ndarray:
    points = np.repeat(centres, per, axis=0) + noise * rng.standard_normal((len(centres) * per, centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_threshold_separates_known_from_unknown():
    similarity = np.array([0.95, 0.9, 0.85, 0.8, 0.5, 0.45, 0.4])
    correct = np.array([True, True, True, True, False, False, False])
    unknown = np.array([False, False, False, False, True, True, True])
    stats = choose_threshold(similarity, correct, unknown)
    assert 0.5 < stats["threshold"] <= 0.8
    assert stats["known_accuracy"] == 1.0 and stats["unknown_rejected"] == 1.0 and stats["balanced_accuracy"] == 1.0
    # Without unknown images: keep 95% of the correct recognitions.
    known = np.linspace(0.5, 1.0, 101)
    stats = choose_threshold(known, np.ones(101, bool), np.zeros(101, bool))
    assert stats["threshold"] == pytest.approx(np.quantile(known, 0.05)) and stats["unknown_rejected"] is None
    assert 0.94 <= stats["known_accepted"] <= 0.96


def test_calibrated_gallery_answers_unknown_for_a_new_kind(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 3  # three well-separated directions; the third is never enrolled
    enrolled, held = _blobs(rng, centres[:2], 20, 0.3), _blobs(rng, centres, 10, 0.3)
    gallery = Gallery(enrolled, ["a"] * 20 + ["b"] * 20, [f"{i}.png" for i in range(40)], {"identity": "x"})
    truth = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    stats = calibrate(gallery, held, truth)
    assert stats["unknown_images"] == 10 and stats["balanced_accuracy"] == 1.0
    answers = [r.label for r in recognize(gallery, held, [f"q{i}" for i in range(30)], topk=2)]
    assert answers == truth[:20] + [UNKNOWN] * 10


def test_faiss_indexes_agree_with_exact_search():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    vectors = _blobs(rng, rng.standard_normal((20, 32)), 30, 0.5)  # 600 vectors in 20 clumps
    queries = _blobs(rng, rng.standard_normal((20, 32)), 2, 0.5)
    exact_scores, exact_ids = build_index(vectors, "exact").search(queries, 10)
    assert np.all(np.diff(exact_scores, axis=1) <= 0)  # best first
    np.testing.assert_allclose(exact_scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    flat_scores, flat_ids = build_index(vectors, "flat").search(queries, 10)
    np.testing.assert_array_equal(flat_ids, exact_ids)
    np.testing.assert_allclose(flat_scores, exact_scores, atol=1e-5)
    for kind, least in (("hnsw", 0.98), ("ivf", 0.8)):
        ids = build_index(vectors, kind).search(queries, 10)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids, strict=True)])
        assert recall >= least, (kind, recall)


def test_adding_to_an_index_does_not_rebuild_it(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    vectors = _blobs(rng, rng.standard_normal((10, 16)), 50, 0.4)
    gallery = Gallery(vectors[:400], ["x"] * 400, [str(i) for i in range(400)], {"identity": "x"}, index_kind="hnsw")
    gallery.save(tmp_path / "g")
    assert (tmp_path / "g" / "index.faiss").is_file()
    loaded = Gallery.load(tmp_path / "g")
    index = loaded.index()
    loaded.add("y", vectors[400:], [str(i) for i in range(400, 500)])
    assert loaded.index() is index and index.ntotal == 500  # the same graph, grown
    loaded.save(tmp_path / "g")
    again = Gallery.load(tmp_path / "g")
    assert again._index is not None and again._index.ntotal == 500  # read from index.faiss, not rebuilt
    ids = again.search(vectors[450:460], 1)[1][:, 0]
    assert list(ids) == list(range(450, 460))


def test_auto_index_is_exact_for_small_galleries():
    assert choose_kind(1000) == "exact" and choose_kind(10**6) == "ivf" and choose_kind(10, "hnsw") == "hnsw"


def test_kmeans_clusters_blobs_and_scores_them():
    rng = np.random.default_rng(3)
    points = _blobs(rng, np.eye(8)[:3] * 3, 15, 0.2)
    truth = ["a"] * 15 + ["b"] * 15 + ["c"] * 15
    assignments, method = cluster_embeddings(points, k=3)
    assert method.startswith("k-means") and cluster_scores(truth, assignments)["purity"] == 1.0
    hdb, _ = cluster_embeddings(points, min_cluster_size=5)
    assert cluster_scores(truth, hdb)["nmi"] > 0.9
    mixed = cluster_scores(truth, np.array([0] * 30 + [1] * 15))  # a and b merged
    assert mixed["purity"] == pytest.approx(30 / 45) and mixed["nmi"] < 1


def test_folder_labels_come_from_class_folders(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    shown = [str(root / "cats" / "1.png"), str(root / "dogs" / "a" / "2.png")]
    assert folder_labels([str(root)], shown) == ["cats", "dogs"]
    assert folder_labels([str(root)], shown + [str(root / "3.png")]) is None  # loose image: no labels


def test_prototype_and_nearest_scoring_differ_as_designed():
    def unit(degrees: float) -> list[float]:
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]

    # Label a: two images at 0 and 53 degrees (mean direction 26.6); label b: one image at 60.
    vectors = np.array([unit(0), unit(53.13), unit(60)], np.float32)
    gallery = Gallery(vectors, ["a", "a", "b"], ["1", "2", "3"], {"identity": "x"})
    names, prototypes = gallery.prototypes()
    assert names == ["a", "b"]
    np.testing.assert_allclose(prototypes, np.array([unit(26.565), unit(60)]), atol=1e-4)
    query = np.array([unit(50)], np.float32)
    nearest = label_scores(gallery, query, 2, by="nearest")[0]
    prototype = label_scores(gallery, query, 2, by="prototype")[0]
    assert [lab for lab, _ in nearest] == ["a", "b"] and nearest[0][1] == pytest.approx(np.cos(np.radians(3.13)), 1e-4)
    assert [lab for lab, _ in prototype] == ["b", "a"] and prototype[0][1] == pytest.approx(
        np.cos(np.radians(10)), 1e-4
    )
    gallery.add("b", np.array([unit(70)], np.float32), ["4"])  # a new image moves b's prototype
    assert gallery.prototypes()[1][1] == pytest.approx(unit(65), abs=1e-4)
