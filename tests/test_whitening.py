"""The embedding's whitening (imgcls.models.whitening): its arithmetic against numpy, its
storage in a checkpoint's metadata, and a trained checkpoint's embedding that uses it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.errors import CheckpointError
from imgcls.models.whitening import Whitening, fit_whitening
from imgcls.retrieval.embed import Embedder, model_identity
from tests.helpers import tiny_model


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _features(n: int = 600, d: int = 12, seed: int = 0) -> np.ndarray:
    """Unit rows whose variances differ by three orders of magnitude between directions."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return _unit(rng.standard_normal((n, d)) * np.logspace(0, -1.5, d) @ rotation + 2.0 * rotation[0])


def _numpy_whitening(x: np.ndarray, fit: np.ndarray, k: int, shrinkage: float) -> np.ndarray:
    """The same map from numpy's eigendecomposition of the covariance: the first k directions
    their own variance, the rest their mean, each plus shrinkage x the mean variance."""
    mean = fit.mean(0)
    values, vectors = np.linalg.eigh(np.cov((fit - mean).T))
    values, vectors = values[::-1], vectors[:, ::-1]
    s = shrinkage * values.mean()
    scale = np.concatenate([values[:k], np.full(len(values) - k, values[k:].mean() if k < len(values) else 0)])
    return _unit((x - mean) @ vectors @ np.diag(1 / np.sqrt(scale + s)) @ vectors.T)


@pytest.mark.parametrize("k", [12, 4], ids=["every-direction", "4-directions"])
def test_whitening_equals_numpys_shrunk_covariance(k):
    fit, queries = _features(), _features(50, seed=1)
    whitening = fit_whitening(fit, components=k, shrinkage=0.5)
    ours = whitening.apply(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(ours, _numpy_whitening(queries, fit, k, 0.5), atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_whitening_spreads_the_variance_over_more_directions():
    """The variance's participation ratio (sum of the variances squared over the sum of their
    squares: how many directions carry it) grows; the shrinkage keeps it well below all 12."""
    fit = _features(2000)
    whitened = fit_whitening(fit).apply(torch.from_numpy(fit).float()).numpy()

    def directions(x: np.ndarray) -> float:
        variances = np.linalg.eigvalsh(np.cov(x.T))
        return variances.sum() ** 2 / (variances**2).sum()

    assert 1.3 * directions(fit) < directions(whitened) < 10


def test_metadata_round_trip_and_damaged_metadata_is_refused():
    whitening = fit_whitening(_features(), components=5)
    saved = whitening.to_dict()
    again = Whitening.from_dict(copy.deepcopy(saved), 12)
    x = torch.from_numpy(_features(20, seed=3)).float()
    torch.testing.assert_close(again.apply(x), whitening.apply(x), atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="the model's are 16-d"):
        Whitening.from_dict(saved, 16)
    damaged = [
        {**saved, "mean": saved["mean"][:-8]},  # a value short
        {**saved, "components": saved["components"] * 1000},  # far longer than the shape allows
        {**saved, "variances": "not base64!"},
        {**saved, "shape": [5]},
        {**saved, "shrinkage": 0.0},
        {k: v for k, v in saved.items() if k != "residual"},
    ]
    nan = np.frombuffer(__import__("base64").b64decode(saved["variances"]), "<f4").copy()
    nan[0] = np.nan
    damaged.append({**saved, "variances": __import__("base64").b64encode(nan.tobytes()).decode()})
    for bad in damaged:
        with pytest.raises(CheckpointError):
            Whitening.from_dict(bad, 12)


def test_too_few_images_give_no_whitening():
    assert fit_whitening(_features(1)) is None
    assert fit_whitening(_features(3), components=32).components.shape == (2, 12)


def test_a_trained_checkpoint_whitens_its_embedding(tmp_path):
    """imgcls train stores the whitening of its training images' features; the embedding is
    the whitened, unit-length pooled feature, and the model's identity covers the whitening."""
    checkpoint = tiny_model()["checkpoint"]
    meta = ckpt.read_metadata(checkpoint)
    assert set(meta["whitening"]) == {"mean", "components", "variances", "shape", "residual", "shrinkage"}
    embedder = Embedder.from_checkpoint(checkpoint)
    assert embedder.whitening is not None
    images = np.random.default_rng(0).integers(0, 256, (6, *embedder.blank(1).shape[1:]), dtype=np.uint8)
    whitened = embedder.embed(images)
    raw = Embedder(embedder.network, embedder.preprocessing, embedder.metadata, embedder.identity, "").embed(images)
    np.testing.assert_allclose(whitened, embedder.whitening.apply(torch.from_numpy(raw)).numpy(), atol=1e-5)
    assert not np.allclose(whitened, raw, atol=1e-3)
    unwhitened = {k: v for k, v in meta.items() if k != "whitening"}
    assert model_identity(embedder.network, unwhitened) != embedder.identity


SEEN, UNSEEN = [0, 1, 2, 3, 4, 5, 6, 7], [8, 9]  # Bag and Ankle boot are never trained on


@pytest.fixture(scope="module")
def fashion_mnist_8_classes(tmp_path_factory) -> Path:
    """A real run on real data, scaled down from benchmarks/recognition.py: a small-net trained
    4 epochs on 8 Fashion-MNIST classes of 500 images each; its best checkpoint."""
    from PIL import Image

    from imgcls.cli.main import main
    from tests.helpers import fashion_mnist_images

    root = tmp_path_factory.mktemp("fm8")
    for label in SEEN:
        folder = root / "data" / f"c{label}"
        folder.mkdir(parents=True)
        for i, pixels in enumerate(fashion_mnist_images("train", label, 500)):
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    train = ["-q", "train", str(root / "data"), "--recipe", "fashion-mnist", "--epochs", "4"]
    assert main([*train, "--seed", "0", "--out", str(root / "run")]) == 0
    return root / "run" / "best.safetensors"


def fm_gallery(embedder: Embedder, counts: dict[int, int]):
    """A gallery of `counts[label]` training images per label, none the network trained on."""
    from imgcls.retrieval.gallery import Gallery
    from tests.helpers import fashion_mnist_images

    enrolled = [(label, fashion_mnist_images("train", label, n, 500)) for label, n in counts.items()]
    vectors = np.concatenate([embedder.embed(np.stack(images)[..., None]) for _, images in enrolled])
    labels = [str(label) for label, images in enrolled for _ in images]
    return Gallery(vectors, labels, [""] * len(labels), {"identity": "test"}, index_kind="exact")


@pytest.mark.slow
def test_whitening_recognises_new_fashion_mnist_classes_better(fashion_mnist_8_classes):
    """Bag and Ankle boot enrolled from 5 images each beside 100 of every known class: their 400
    test images are recognised by prototype far more often with the checkpoint's whitening than
    without it, and the known classes stay close."""
    from imgcls.retrieval.recognize import label_scores
    from tests.helpers import fashion_mnist_images

    embedder = Embedder.from_checkpoint(fashion_mnist_8_classes)
    test = [(label, fashion_mnist_images("test", label, 200)) for label in range(10)]

    def accuracy(whitened: bool) -> tuple[float, float]:
        use = embedder if whitened else Embedder(embedder.network, embedder.preprocessing, {}, "", "")
        found = fm_gallery(use, {label: 5 if label in UNSEEN else 100 for label in range(10)})
        right = {}
        for label, images in test:
            best = label_scores(found, use.embed(np.stack(images)[..., None]), 1, by="prototype")
            right[label] = np.mean([candidates[0][0] == str(label) for candidates in best])
        return float(np.mean([right[c] for c in UNSEEN])), float(np.mean([right[c] for c in SEEN]))

    (new_white, known_white), (new_raw, known_raw) = accuracy(True), accuracy(False)
    assert new_white > new_raw + 0.1, (new_white, new_raw)
    assert known_white > known_raw - 0.03, (known_white, known_raw)


@pytest.mark.slow
def test_the_standardised_score_tells_a_never_enrolled_class_apart(fashion_mnist_8_classes):
    """Open set on real data: Bag enrolled from 5 images, Ankle boot never; the ankle boots'
    test images are told from the known classes' by the gallery's standardised score
    (imgcls.retrieval.recognize.open_set_score) far better than by the bare similarity."""
    from sklearn.metrics import roc_auc_score

    from imgcls.retrieval.recognize import label_scores, open_set_score
    from tests.helpers import fashion_mnist_images

    embedder = Embedder.from_checkpoint(fashion_mnist_8_classes)
    gallery = fm_gallery(embedder, {label: 5 if label == 8 else 100 for label in range(9)})
    queries = {
        label: embedder.embed(np.stack(fashion_mnist_images("test", label, 200))[..., None]) for label in range(10)
    }
    best = label_scores(gallery, np.concatenate(list(queries.values())), 1)
    similarity = np.array([b[0][1] for b in best])
    score = np.array([open_set_score(gallery, b[0][0], b[0][1], "standardised") for b in best])
    unknown = np.repeat(list(queries), 200) == 9
    by_score, by_similarity = roc_auc_score(unknown, -score), roc_auc_score(unknown, -similarity)
    assert by_score > max(by_similarity + 0.05, 0.8), (by_score, by_similarity)


def test_whitening_can_be_left_out(tmp_path):
    from imgcls.cli.main import main
    from tests.helpers import make_class_folders

    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    args = ["-q", "train", str(data), "--model", "keras-cnn", "--img-size", "16", "--epochs", "1"]
    assert main([*args, "--set", "train.whiten_embedding=false", "--out", str(tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "best.safetensors"
    assert "whitening" not in ckpt.read_metadata(checkpoint)
    assert Embedder.from_checkpoint(checkpoint).whitening is None
