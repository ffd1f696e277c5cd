"""The traditional pipeline as imgcls models: hand-made features, then a scikit-learn classifier.

- ``hog-svm``: HOG (scikit-image) of the ITU-R 601 luma -> standardise -> optional Nystroem
  RBF map -> LinearSVC, probabilities by temperature-scaled softmax.
- ``color-hist-logreg``: per-channel colour histograms + a coarse grid of mean colours ->
  standardise -> LogisticRegression (softmax of its decision, exactly sklearn's predict_proba).

A fitted model is nothing but arrays plus JSON hyper-parameters: scikit-learn only fits, and
every prediction is computed here in NumPy from the stored arrays (decision = x @ coef.T +
intercept), so a checkpoint never holds, and loading never unpickles, a Python object.

Calibration of the SVM: softmax(T * decision) with one temperature T minimising the log loss
on a stratified held-out slice (``calibration_fraction``) of the training set, after which the
SVM is refitted on all of it. One number cannot overfit a small slice nor change the ranking
(so accuracy is untouched); Platt's per-class sigmoids fit 2K numbers and need renormalising to
sum to one. A binary model is stored as two rows (-w/2, +w/2), whose softmax is the sigmoid of
the binary decision, so one code path serves every number of classes.
"""

from __future__ import annotations

import difflib
import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from imgcls.errors import CheckpointError, ConfigError, DataError
from imgcls.models.classic_features import colour_features, hog_features
from imgcls.models.registry import CLASSIC_MODELS

log = logging.getLogger(__name__)

TENSOR_PREFIX = "classic."

# None means "chosen from the data at fit time"; fitted models store the value chosen.
DEFAULTS: dict[str, dict] = {
    "hog-svm": {
        "orientations": 9,
        "pixels_per_cell": None,  # round(side / 7): 4 at 28 px, 5 at 32, 9 at 64 (7 x 7 cells)
        "cells_per_block": 2,
        "block_norm": "L2-Hys",
        "kernel": "rbf",  # "rbf": Nystroem map before the linear SVM; "linear": none
        "n_components": 2000,
        "gamma": None,  # 1 / feature dimension (the features are standardised)
        "C": None,  # 1.0 with the rbf map, 0.01 on bare standardised HOG (both tuned on Fashion-MNIST)
        "tol": 1e-4,
        "max_iter": 1000,
        "calibration_fraction": 0.1,
    },
    "color-hist-logreg": {"bins": 16, "grid": 4, "C": 1.0, "max_iter": 1000},
}
_POSITIVE_INT = {"orientations", "pixels_per_cell", "cells_per_block", "n_components", "max_iter", "bins", "grid"}
_MAX_INT = {"bins": 256}  # one bin per uint8 value at most
_CHOICES = {"block_norm": ("L1", "L1-sqrt", "L2", "L2-Hys"), "kernel": ("rbf", "linear")}


def resolve_kwargs(name: str, kwargs: dict) -> dict:
    """The defaults overridden by kwargs; unknown names or bad values raise ConfigError."""
    if name not in CLASSIC_MODELS:
        raise ConfigError(f"{name!r} is not a classic model; classic models: {', '.join(CLASSIC_MODELS)}.")
    defaults = DEFAULTS[name]
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(
            f"model {name!r} does not accept {', '.join(hints)}; it accepts {', '.join(sorted(defaults))}."
        )
    out = {**defaults, **kwargs}
    for key, value in out.items():
        if value is None and defaults[key] is None:  # chosen at fit time
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _POSITIVE_INT:
            ok, want = isinstance(value, int) and number and 0 < value <= _MAX_INT.get(key, value), "a positive integer"
            want += f" up to {_MAX_INT[key]}" if key in _MAX_INT else ""
        elif key in _CHOICES:
            ok, want = value in _CHOICES[key], "one of " + ", ".join(map(repr, _CHOICES[key]))
        elif key == "calibration_fraction":
            ok, want = number and 0 <= value <= 0.5, "a number in [0, 0.5]"
        else:
            ok, want = number and value > 0, "a positive number"
        if not ok:
            raise ConfigError(f"model {name!r}: {key} must be {want}, got {value!r}.")
    if name == "hog-svm" and out["C"] is None:
        out["C"] = 1.0 if out["kernel"] == "rbf" else 0.01
    return out


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W) grey, as the built-in datasets come
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise DataError(f"classic models take uint8 images (N, H, W, 1 or 3); got {images.dtype} {images.shape}.")
    return images


def _resolve_size(name: str, kw: dict, height: int, width: int) -> dict:
    """Fill in the size-dependent defaults and check the images are large enough."""
    kw = dict(kw)
    side = min(height, width)
    if name == "hog-svm":
        if kw["pixels_per_cell"] is None:
            kw["pixels_per_cell"] = max(2, round(side / 7))
        if side < kw["pixels_per_cell"] * kw["cells_per_block"]:
            raise ConfigError(
                f"model 'hog-svm': {height}x{width} px images hold no HOG block of {kw['cells_per_block']} cells of "
                f"{kw['pixels_per_cell']} px; lower pixels_per_cell or cells_per_block, or use larger images."
            )
    elif kw["grid"] > side:
        raise ConfigError(f"model 'color-hist-logreg': grid {kw['grid']} exceeds the {side} px image side.")
    return kw


def extract_features(name: str, images: np.ndarray, kwargs: dict) -> np.ndarray:
    """Hand-made features of uint8 images (N, H, W, C) as float32 (N, D); deterministic."""
    kw = resolve_kwargs(name, kwargs)
    images = _check_images(images)
    kw = _resolve_size(name, kw, images.shape[1], images.shape[2])
    if len(images) == 0:  # the width D still depends on the image size
        return extract_features(name, np.zeros((1, *images.shape[1:]), np.uint8), kw)[:0]
    return hog_features(images, kw) if name == "hog-svm" else colour_features(images, kw)


# ---- the fitted model -----------------------------------------------------------------------


def _nystroem(x: np.ndarray, components: np.ndarray, normalization: np.ndarray, gamma: float) -> np.ndarray:
    """sklearn's Nystroem(kernel="rbf").transform: exp(-gamma |x - c|^2) @ normalization.T."""
    sq = (x * x).sum(1)[:, None] + (components * components).sum(1)[None, :] - 2 * (x @ components.T)
    np.maximum(sq, 0, out=sq)  # rounding can make tiny distances negative
    return np.exp(-gamma * sq) @ normalization.T


_REQUIRED = ("input_shape", "num_classes", "classes", "mean", "std", "coef", "intercept", "temperature")


@dataclass
class ClassicModel:
    name: str
    kwargs: dict  # JSON-ready hyper-parameters, size-dependent defaults filled in
    arrays: dict[str, np.ndarray]  # everything fitted
    info: dict = field(default_factory=dict, compare=False)  # fit timings and scores; not saved

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> the classifier's input: standardised, then kernel-mapped if fitted so."""
        a = self.arrays
        x = (features - a["mean"]) / a["std"]
        if "kernel_components" in a:
            x = _nystroem(x, a["kernel_components"], a["kernel_normalization"], float(a["kernel_gamma"][0]))
        return x

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Linear decisions (N, K_fitted) for the fitted classes (arrays["classes"])."""
        return self.transform(features) @ self.arrays["coef"].T + self.arrays["intercept"]

    def _proba_from_features(self, features: np.ndarray) -> np.ndarray:
        from scipy.special import softmax

        z = softmax(self.decision_function(features).astype(np.float64) * float(self.arrays["temperature"][0]), axis=1)
        out = np.zeros((len(features), int(self.arrays["num_classes"][0])), dtype=np.float64)
        out[:, self.arrays["classes"]] = z  # a class absent from training gets probability 0
        return out

    def predict_proba(self, images: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        images = _check_images(images)
        expected = tuple(int(v) for v in self.arrays["input_shape"])
        if images.shape[1:] != expected:
            raise DataError(f"model {self.name!r} was fitted on images {expected} (H, W, C); got {images.shape[1:]}.")
        out = [
            self._proba_from_features(extract_features(self.name, images[i : i + batch_size], self.kwargs))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, int(self.arrays["num_classes"][0])))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {TENSOR_PREFIX + k: torch.from_numpy(np.array(v, copy=True)) for k, v in self.arrays.items()}

    @classmethod
    def from_tensors(cls, name: str, kwargs: dict, tensors: dict[str, torch.Tensor]) -> ClassicModel:
        kwargs = resolve_kwargs(name, kwargs)
        arrays = {k[len(TENSOR_PREFIX) :]: v.numpy().copy() for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise CheckpointError(
                f"the {name!r} weights lack {', '.join(TENSOR_PREFIX + k for k in missing)}; "
                "the checkpoint is damaged or not a classic model's."
            )
        return cls(name, kwargs, arrays)


# ---- fitting --------------------------------------------------------------------------------


def _stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of about `fraction` of each class, leaving at least one of each to fit on."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        mask[rows[: min(round(fraction * len(rows)), len(rows) - 1)]] = True
    return mask


def _fit_temperature(decision: np.ndarray, target: np.ndarray) -> float:
    """The T minimising the mean log loss of softmax(T * decision) (searched on log T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    picked = decision[np.arange(len(target)), target]

    def loss(log_t: float) -> float:
        t = np.exp(log_t)
        return float(np.mean(logsumexp(t * decision, axis=1) - t * picked))

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(1e-2), np.log(1e3)), method="bounded").x))


def _two_rows(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A binary (1, D) model as two rows whose softmax is the sigmoid of the original decision."""
    if coef.shape[0] == 1:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def _fit_linear(name: str, x: np.ndarray, y: np.ndarray, kw: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    from threadpoolctl import threadpool_limits

    if name == "hog-svm":
        clf = LinearSVC(C=kw["C"], tol=kw["tol"], max_iter=kw["max_iter"], dual=True, random_state=seed)
    else:
        clf = LogisticRegression(C=kw["C"], max_iter=kw["max_iter"], random_state=seed)
    # liblinear never calls BLAS; lbfgs does, on (N, D) x (D, K) products too small to share:
    # on 2 busy cores, threaded OpenBLAS made a 3,000 x 32 fit take 10 s instead of 0.1 s.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("%s: the solver stopped at max_iter=%d before converging; raise max_iter", name, kw["max_iter"])
    return _two_rows(clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64))


def _fit_nystroem(x: np.ndarray, kw: dict, seed: int) -> dict[str, np.ndarray]:
    """sklearn's Nystroem RBF map, kept as arrays for _nystroem (every transform, fit included)."""
    from sklearn.kernel_approximation import Nystroem

    m = min(kw["n_components"], len(x))  # on a small set every image is a component: the exact kernel
    ny = Nystroem(kernel="rbf", gamma=kw["gamma"], n_components=m, random_state=seed).fit(x)
    return {
        "kernel_components": ny.components_.astype(np.float32),
        "kernel_normalization": ny.normalization_.astype(np.float32),
        "kernel_gamma": np.array([kw["gamma"]], dtype=np.float64),
    }


def _check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"need {n} integer labels for {n} images, got {labels.dtype} {labels.shape}.")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}.")
    if len(np.unique(labels)) < 2:
        raise DataError("a classifier needs images of at least two classes.")
    return labels.astype(np.int64)


def fit_classic(
    name: str, images: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0, **kwargs
) -> ClassicModel:
    """Fit a classic model on uint8 images (N, H, W, C) with labels in 0..num_classes-1."""
    kw = resolve_kwargs(name, kwargs)
    images = _check_images(images)
    labels = _check_labels(labels, len(images), num_classes)
    kw = _resolve_size(name, kw, images.shape[1], images.shape[2])
    start = time.perf_counter()
    features = extract_features(name, images, kw)
    feature_seconds = time.perf_counter() - start

    start = time.perf_counter()
    classes = np.unique(labels)
    target = np.searchsorted(classes, labels)  # column of each label among the fitted classes
    std = features.std(axis=0, dtype=np.float64)
    std[std < 1e-6] = 1.0  # a constant feature stays 0 instead of dividing by 0
    arrays: dict[str, np.ndarray] = {
        "input_shape": np.array(images.shape[1:], dtype=np.int64),
        "num_classes": np.array([num_classes], dtype=np.int64),
        "classes": classes,
        "mean": features.mean(axis=0, dtype=np.float64).astype(np.float32),
        "std": std.astype(np.float32),
        "temperature": np.ones(1),
    }
    if name == "hog-svm" and kw["kernel"] == "rbf":
        kw["gamma"] = kw["gamma"] or 1.0 / features.shape[1]  # standardised: mean |x - y|^2 = 2 D
        arrays.update(_fit_nystroem((features - arrays["mean"]) / arrays["std"], kw, seed))
    model = ClassicModel(name, kw, arrays)
    x = np.concatenate([model.transform(features[i : i + 4096]) for i in range(0, len(features), 4096)])
    del features

    info: dict = {"feature_seconds": feature_seconds, "num_images": len(x), "num_features": x.shape[1]}
    if kw.get("calibration_fraction"):
        held = _stratified_holdout(target, kw["calibration_fraction"], np.random.default_rng(seed))
        if held.any():
            coef, intercept = _fit_linear(name, x[~held], target[~held], kw, seed)
            decision = x[held] @ coef.T + intercept
            arrays["temperature"] = np.array([_fit_temperature(decision, target[held])])
            info["heldout_accuracy"] = float((decision.argmax(1) == target[held]).mean())
            info["heldout_size"] = int(held.sum())
        else:
            log.warning("%s: too few images to hold some out for calibration; temperature left at 1", name)
    arrays["coef"], arrays["intercept"] = _fit_linear(name, x, target, kw, seed)
    info["fit_seconds"] = time.perf_counter() - start
    info["temperature"] = float(arrays["temperature"][0])
    model.info = info
    held_out = ""
    if "heldout_accuracy" in info:
        held_out = f"; held-out accuracy {info['heldout_accuracy']:.4f}, softmax temperature {info['temperature']:.3g}"
    log.info(
        "fitted %s on %d images, %d features, %d classes in %.1f s (features %.1f s, classifier %.1f s)%s",
        name,
        len(x),
        x.shape[1],
        len(classes),
        feature_seconds + info["fit_seconds"],
        feature_seconds,
        info["fit_seconds"],
        held_out,
    )
    return model
