"""Likely label errors: out-of-fold probabilities from a fast model, ranked by confident learning.

A small network (standardise, PCA to 50 dimensions, one hidden layer of 128) on each
image's grey and colour thumbnails (doctor_scan) is trained k times, each time predicting
the fold it did not see, so every image gets a probability per class from a model that
never trained on it. cleanlab's find_label_issues (confident learning, Northcutt et al.
2021) then picks the images whose given label the model confidently disagrees with, ranked
by self-confidence (the probability of the given label, lowest first). cleanlab installs
with imgcls's pins (it adds pandas and termcolor), so the method is used from its authors
rather than re-written here.

On 6,000 Fashion-MNIST images with 100 flipped labels this model (83% accurate) beat a
plain logistic regression (81.5%, 4x slower to fit) and a Nystroem kernel map; cleanlab's
filter_by="both" flagged 483 images instead of 596 at the same recall (0.80).

Thumbnails cannot tell a rose from an apple: on small colour sets (7 classes of clip art, 27
pictures each) the same model was right out-of-fold only 39-57% of the time and flagged 32-47%
of the correctly labelled pictures. With --pretrained the model is instead a logistic regression
on a pretrained network's pooled features (doctor_embed), and an image is flagged only when that
model gives its suggested class at least MIN_SUGGESTED. Whatever the model, its out-of-fold
accuracy is reported, and when it is too weak to judge (skill below MIN_SKILL) nothing is flagged
and the report says so, with what would help.

The fit is capped at max_images (a stratified random sample, seeded; 100,000 by default):
on 2 cores 5 folds over 6,000 images take ~5 s and over 20,000 ~10 s (early stopping); above
the cap the other images are not checked for label errors, and the report says how many.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np

from imgcls.extras import require

log = logging.getLogger("imgcls")

FOLDS = 5
MAX_IMAGES = 100_000
MIN_PER_CLASS = FOLDS  # every fold needs each class once for the model to predict it
THUMBNAILS, PRETRAINED = "thumbnails", "pretrained"  # the two label models
# The linear probe on pretrained features: C=0.01 (strong L2) keeps its probabilities honest on
# ~30 images a class; at C=0.1 it was as accurate but, with the bar below, flagged 6.5% of clean
# clip-art pictures instead of 1.2%.
PROBE_C = 0.01
# The lowest probability the out-of-fold model must give the suggested class before an image is
# flagged. On 3 x 189 clean clip-art pictures (seeds 0-2 of benchmarks/doctor_labels.py, where C
# and the bar were chosen; seeds 3-4 held out) the probe flagged 12.7% with no bar, 5.5% at 0.5,
# 3.5% at 0.6 and 1.2% at 0.7, finding 16, 13 and 12 of 30 planted flips at 0.5-0.7. The thumbnail
# model gets no bar: on planted Fashion-MNIST flips 0.5 would cost 3 of its 79 finds.
MIN_SUGGESTED = {THUMBNAILS: 0.0, PRETRAINED: 0.7}
# The label model judges labels only when its out-of-fold accuracy closes at least this share of
# the gap between always answering the largest class and always being right, its skill
# (accuracy - majority) / (1 - majority). Measured on 5 x 2 clip-art sets (benchmarks/doctor_labels.py):
# thumbnails 0.28-0.50 (unchecked they flagged 32-47% of clean pictures), the pretrained probe 0.57-0.75;
# thumbnails on Fashion-MNIST 0.80. A model whose flags have no MIN_SUGGESTED bar must be more skilled.
MIN_SKILL = {THUMBNAILS: 0.6, PRETRAINED: 0.5}


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0, classifier: str = THUMBNAILS
):
    """(n, classes) probabilities, each row from the fold model that did not train on it."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    classes = int(labels.max()) + 1
    proba = np.zeros((len(labels), classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: these matmuls are small, and on 2 shared cores a second spinning thread made
    # the 5 folds over 6,000 images 10x slower (47 s against 4 s, load average ~6).
    with threadpool_limits(1):
        for fold, (train, held) in enumerate(splitter.split(features, labels)):
            model = (
                _feature_model() if classifier == PRETRAINED else _thumbnail_model(len(train), features.shape[1], seed)
            )
            with warnings.catch_warnings():
                # Stopping before full convergence changes no ranking worth the wait.
                warnings.simplefilter("ignore")
                model.fit(features[train], labels[train])
            proba[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
            log.debug("label model fold %d/%d done", fold + 1, folds)
    return proba


def _thumbnail_model(rows: int, width: int, seed: int):
    """Standardise, PCA to 50, one hidden layer of 128: the model for doctor_scan's thumbnails."""
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        PCA(min(50, width, rows - 1), random_state=seed),
        MLPClassifier((128,), alpha=1e-2, max_iter=60, early_stopping=rows >= 200, random_state=seed),
    )


def _feature_model():
    """Logistic regression on standardised pretrained features (a linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))


def _sample(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """Indices of a stratified random sample of at most max_images (all of them when fewer)."""
    if len(labels) <= max_images:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=max_images, stratify=labels, random_state=seed, shuffle=True
    )
    return np.sort(keep)


def find_label_errors(
    features: np.ndarray | Callable[[np.ndarray], np.ndarray],
    labels: list[str],
    *,
    classifier: str = THUMBNAILS,
    folds: int = FOLDS,
    max_images: int = MAX_IMAGES,
    seed: int = 0,
) -> dict:
    """Likely label errors among the images whose features and given labels are passed.

    features is one row per label, or a function giving the rows of the chosen indices (so
    pretrained features are computed only for the images checked). Returns {"checked": n,
    "model": str, "accuracy": out-of-fold accuracy, "majority_rate", "skill", "judged": bool,
    "skipped_reason": str | None, "issues": [{index, given, suggested, given_probability,
    suggested_probability}]}, issues most suspicious first. When the model is too weak to judge
    (skill below its MIN_SKILL) judged is False, issues is empty and skipped_reason says why.
    """
    names = sorted(set(labels))
    counts = {name: labels.count(name) for name in names}
    usable = [name for name in names if counts[name] >= MIN_PER_CLASS]
    result = {"checked": 0, "model": classifier, "accuracy": None, "majority_rate": None, "skill": None}
    if len(usable) < 2:
        reason = f"needs 2+ classes with {MIN_PER_CLASS}+ images each"
        return {**result, "judged": False, "issues": [], "skipped_reason": reason}
    code = {name: k for k, name in enumerate(usable)}
    rows = np.array([k for k, name in enumerate(labels) if name in code])
    y = np.array([code[labels[k]] for k in rows])
    chosen = _sample(y, max_images, seed)
    rows, y = rows[chosen], y[chosen]
    x = features(rows) if callable(features) else np.asarray(features)[rows]
    proba = out_of_fold_probabilities(x, y, folds=folds, seed=seed, classifier=classifier)
    accuracy = float((proba.argmax(axis=1) == y).mean())
    majority = float(np.bincount(y).max() / len(y))
    skill = (accuracy - majority) / (1 - majority)
    result.update(checked=len(rows), accuracy=round(accuracy, 4), majority_rate=round(majority, 4))
    result.update(skill=round(skill, 4), judged=skill >= MIN_SKILL[classifier])
    skipped = len(labels) - len(rows)
    reason = (
        f"{skipped} image(s) not checked (sample capped at {max_images:,}, or class too small)" if skipped else None
    )
    if not result["judged"]:
        return {**result, "issues": [], "skipped_reason": weak_model_reason(result, reason)}

    find_label_issues = require("cleanlab.filter", "doctor").find_label_issues

    ranked = find_label_issues(y, proba, filter_by="both", return_indices_ranked_by="self_confidence", n_jobs=1)
    bar = MIN_SUGGESTED[classifier]
    result["min_suggested_probability"] = bar
    issues = []
    for k in ranked:
        suggested = int(proba[k].argmax())
        if proba[k, suggested] < bar:  # the model is not sure enough of another class to accuse
            continue
        issues.append(
            {
                "index": int(rows[k]),
                "given": usable[y[k]],
                "suggested": usable[suggested],
                "given_probability": round(float(proba[k, y[k]]), 4),
                "suggested_probability": round(float(proba[k, suggested]), 4),
            }
        )
    return {**result, "issues": issues, "skipped_reason": reason}


def weak_model_reason(result: dict, other: str | None = None) -> str:
    """One line: why no label was flagged, and what would help."""
    helps = (
        "--pretrained imagenet (features of a network trained on photos)"
        if result["model"] == THUMBNAILS
        else "more images per class, or weights closer to these images"
    )
    line = (
        f"not judged: the label model is too weak (out-of-fold accuracy {result['accuracy']:.0%} against "
        f"{result['majority_rate']:.0%} for always the largest class, skill {result['skill']:.2f} "
        f"< {MIN_SKILL[result['model']]}); "
        f"try {helps}"
    )
    return f"{line}; {other}" if other else line
