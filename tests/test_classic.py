"""Classic models (hand-made features + scikit-learn) on generated images: accuracy,
probabilities, pickle-free round trips through a checkpoint, argument checks."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from imgcls import checkpoint as ckpt
from imgcls.errors import CheckpointError, ConfigError, DataError
from imgcls.models import classic, classic_features
from imgcls.models.classic import ClassicModel, extract_features, fit_classic
from imgcls.models.registry import CLASSIC_MODELS, is_classic

SIZE = 28
COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)])  # distinct hues and lumas (88, 133, 58)


def _shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """A bright stroke on a dark noisy ground: horizontal bar, vertical bar or ring."""
    y, x = np.mgrid[:SIZE, :SIZE]
    c = rng.integers(8, SIZE - 8, 2)
    half = rng.integers(2, 4)
    if label == 0:
        mask = (np.abs(y - c[0]) < half) & (np.abs(x - c[1]) < 9)
    elif label == 1:
        mask = (np.abs(x - c[1]) < half) & (np.abs(y - c[0]) < 9)
    else:
        mask = np.abs(np.hypot(y - c[0], x - c[1]) - 6) < half
    level = rng.integers(120, 256)  # brightness says nothing about the class
    return np.where(mask, level, 0) + rng.integers(0, 40, (SIZE, SIZE))


def make_images(cue: str, per_class: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 classes told apart by shape (cue "shape") or by colour (cue "colour"), uint8 (N, 28, 28, C)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    images = []
    for label in labels:
        if cue == "shape":
            rgb = np.repeat(_shape(rng, label)[..., None], 3, axis=2)
        else:
            rgb = COLOURS[label] + rng.integers(-60, 60, (SIZE, SIZE, 3))
        rgb = np.clip(rgb, 0, 255)
        images.append(
            rgb.astype(np.uint8) if channels == 3 else (rgb @ classic_features.LUMA).round().astype(np.uint8)[..., None]
        )
    return np.stack(images), labels


CUE = {"hog-svm": "shape", "color-hist-logreg": "colour"}


@pytest.fixture(scope="module")
def fitted() -> dict[tuple[str, int], ClassicModel]:
    models = {}
    for name in CLASSIC_MODELS:
        for channels in (1, 3):
            images, labels = make_images(CUE[name], 60, channels, seed=0)
            models[name, channels] = fit_classic(name, images, labels, 3, seed=0)
    return models


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", CLASSIC_MODELS)
def test_fits_generated_classes(fitted, name: str, channels: int) -> None:
    images, labels = make_images(CUE[name], 30, channels, seed=1)
    proba = fitted[name, channels].predict_proba(images)
    assert proba.shape == (90, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert proba.min() >= 0
    assert (proba.argmax(axis=1) == labels).mean() >= 0.9
    assert proba[np.arange(90), labels].mean() > 0.6  # confident where it is right


def test_svm_temperature_fitted_on_held_out_slice(fitted) -> None:
    model = fitted["hog-svm", 1]
    assert model.info["heldout_size"] == 18  # 10 % of each class of 60
    assert float(model.arrays["temperature"][0]) > 0 and model.info["temperature"] != 1.0
    assert model.kwargs["pixels_per_cell"] == 4  # round(28 / 7)


@pytest.mark.parametrize("name", CLASSIC_MODELS)
def test_round_trip_through_checkpoint(fitted, tmp_path, monkeypatch, name: str) -> None:
    model = fitted[name, 3]
    images, _ = make_images(CUE[name], 10, 3, seed=2)
    expected = model.predict_proba(images)

    again = ClassicModel.from_tensors(name, model.kwargs, model.to_tensors())
    assert np.array_equal(again.predict_proba(images), expected)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used")

    for attr in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, attr, no_pickle)
    path = tmp_path / "classic.safetensors"
    meta = {"model": {"name": name, "kwargs": model.kwargs}}
    ckpt.save_checkpoint(path, model.to_tensors(), json.loads(json.dumps(meta)))  # kwargs are JSON-ready
    tensors, loaded_meta = ckpt.load_checkpoint(path)
    spec = loaded_meta["model"]
    loaded = ClassicModel.from_tensors(spec["name"], spec["kwargs"], tensors)
    assert np.array_equal(loaded.predict_proba(images), expected)

    raw = path.read_bytes()  # safetensors: u64 header length, JSON header, raw little-endian arrays
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F32", "F64", "I64"}
    assert all(k.startswith("classic.") for k in header if k != "__metadata__")


def test_from_tensors_reports_missing_arrays(fitted) -> None:
    tensors = fitted["color-hist-logreg", 1].to_tensors()
    del tensors["classic.coef"]
    with pytest.raises(CheckpointError, match="classic.coef"):
        ClassicModel.from_tensors("color-hist-logreg", {}, tensors)


def test_unknown_and_bad_kwargs_raise_config_error() -> None:
    images, labels = make_images("shape", 5, 1, seed=0)
    with pytest.raises(ConfigError, match=r"'orientatoins' \(did you mean 'orientations'\?\)"):
        fit_classic("hog-svm", images, labels, 3, orientatoins=8)
    with pytest.raises(ConfigError, match="'colour_bins'"):
        extract_features("color-hist-logreg", images, {"colour_bins": 8})
    with pytest.raises(ConfigError, match="orientations must be a positive integer"):
        extract_features("hog-svm", images, {"orientations": 0})
    with pytest.raises(ConfigError, match="kernel must be one of"):
        fit_classic("hog-svm", images, labels, 3, kernel="poly")
    with pytest.raises(ConfigError, match="not a classic model"):
        extract_features("resnet18", images, {})
    with pytest.raises(ConfigError, match="no HOG block"):
        extract_features("hog-svm", images, {"pixels_per_cell": 20})


def test_bad_images_and_labels_raise_data_error(fitted) -> None:
    images, labels = make_images("colour", 5, 1, seed=0)
    with pytest.raises(DataError, match="uint8"):
        extract_features("color-hist-logreg", images.astype(np.float32), {})
    with pytest.raises(DataError, match="labels must lie in 0..2"):
        fit_classic("color-hist-logreg", images, labels + 1, 3)
    with pytest.raises(DataError, match="at least two classes"):
        fit_classic("color-hist-logreg", images, np.zeros_like(labels), 3)
    with pytest.raises(DataError, match=r"fitted on images \(28, 28, 1\)"):
        fitted["color-hist-logreg", 1].predict_proba(np.zeros((2, 32, 32, 1), np.uint8))


@pytest.mark.parametrize("name", CLASSIC_MODELS)
def test_features_deterministic_and_pool_equals_serial(monkeypatch, name: str) -> None:
    images, _ = make_images(CUE[name], 20, 3, seed=3)
    first = extract_features(name, images, {})
    assert first.dtype == np.float32 and first.shape[0] == 60
    assert np.array_equal(extract_features(name, images, {}), first)
    if name == "hog-svm":
        assert first.shape[1] == 6 * 6 * 2 * 2 * 9  # 7x7 cells of 4 px -> 6x6 blocks of 2x2 cells x 9 bins
        monkeypatch.setattr(classic_features, "MIN_PARALLEL", 8)
        monkeypatch.setattr(classic_features, "CHUNK", 16)
        assert np.array_equal(extract_features(name, images, {}), first)  # in 2 processes
    else:
        assert first.shape[1] == 3 * 16 + 4 * 4 * 3
    assert extract_features(name, images[:0], {}).shape == (0, first.shape[1])


def test_hog_reads_itu_601_luma() -> None:
    images, _ = make_images("shape", 4, 3, seed=4)
    grey = (images[..., :3] @ classic_features.LUMA).round().astype(np.uint8)[..., None]
    same = np.repeat(grey, 3, axis=3)  # R = G = B: the luma is the grey value itself
    np.testing.assert_allclose(extract_features("hog-svm", same, {}), extract_features("hog-svm", grey, {}), atol=1e-6)


def test_logreg_probabilities_equal_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    for classes in ([0, 1, 2], [0, 2]):  # multinomial, and binary with class 1 absent
        images, labels = make_images("colour", 20, 3, seed=5)
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
        model = fit_classic("color-hist-logreg", images, labels, 3, seed=0, C=0.5)
        x = model.transform(extract_features("color-hist-logreg", images, {}))
        reference = LogisticRegression(C=0.5, max_iter=1000, random_state=0).fit(x, labels).predict_proba(x)
        proba = model.predict_proba(images)
        assert proba.shape == (len(images), 3)
        if len(classes) == 2:
            assert np.all(proba[:, 1] == 0)
        np.testing.assert_allclose(proba[:, classes], reference, atol=1e-5)  # solver round-off only


def test_nystroem_map_equals_sklearn() -> None:
    from sklearn.kernel_approximation import Nystroem

    x = np.random.default_rng(0).normal(size=(200, 30)).astype(np.float32)
    ny = Nystroem(gamma=1 / 30, n_components=50, random_state=0).fit(x)
    ours = classic._nystroem(x, ny.components_.astype(np.float32), ny.normalization_.astype(np.float32), 1 / 30)
    np.testing.assert_allclose(ours, ny.transform(x), atol=1e-4)


def test_is_classic() -> None:
    assert CLASSIC_MODELS == ("hog-svm", "color-hist-logreg")
    assert is_classic("hog-svm") and is_classic("color-hist-logreg") and not is_classic("resnet18")
