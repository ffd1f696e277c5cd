"""The open-set score of a prototype gallery: the best label's similarity standardised by that
label's own spread (Gallery.label_spread, recognize.open_set_score)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgcls.retrieval.gallery import SPREAD_PRIOR_IMAGES, Gallery
from imgcls.retrieval.recognize import calibrate, choose_threshold, label_scores, open_set_score, recognize


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def around(centre: np.ndarray, cosine: float, n: int, rng) -> np.ndarray:
    """n unit vectors at about `cosine` from the unit vector `centre`, in random directions."""
    noise = rng.standard_normal((n, len(centre)))
    noise -= np.outer(noise @ centre, centre)  # orthogonal to the centre
    return unit(cosine * centre + np.sqrt(1 - cosine**2) * unit(noise))


def test_label_spread_is_the_left_out_similarity_with_its_variance_shrunk_towards_the_pooled_one():
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((3, 16))[[0] * 30 + [1] * 5 + [2]] + 0.5 * rng.standard_normal((36, 16)))
    labels = ["many"] * 30 + ["few"] * 5 + ["one"]
    figures = Gallery(vectors, labels, [""] * 36, {"identity": "x"}).label_spread()

    # Each image against the unit mean of its label's other images, with plain loops.
    left_out = {}
    for label in ("many", "few"):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        left_out[label] = np.array([vectors[i] @ unit(vectors[[j for j in rows if j != i]].sum(0)) for i in rows])
    within = np.concatenate([own - own.mean() for own in left_out.values()]).var()
    pooled_mean = np.concatenate(list(left_out.values())).mean()
    for label, own in [*left_out.items(), ("one", np.array([]))]:
        variance = ((own - own.mean()) ** 2).sum() if len(own) else 0.0
        spread = np.sqrt((variance + SPREAD_PRIOR_IMAGES * within) / (len(own) + SPREAD_PRIOR_IMAGES))
        assert figures[label] == pytest.approx((own.mean() if len(own) else pooled_mean, spread), abs=1e-5)


def test_single_image_labels_leave_the_similarity_as_it_is():
    vectors = unit(np.random.default_rng(1).standard_normal((3, 8)))
    gallery = Gallery(vectors, ["a", "b", "c"], ["", "", ""], {"identity": "x"})
    assert set(gallery.label_spread().values()) == {(0.0, 1.0)}
    assert open_set_score(gallery, "a", 0.42, "standardised") == pytest.approx(0.42)


def tight_and_loose(seed: int = 0):
    """A gallery of a tight label (its images ~0.95 from its centre) and a loose one (~0.6);
    held-out images of both, and unknowns at ~0.8 from the tight label's centre: more similar
    to an enrolled prototype than most known images of the loose label are to theirs."""
    rng = np.random.default_rng(seed)
    tight, loose = np.eye(32)[0], np.eye(32)[1]
    enrolled = np.concatenate([around(tight, 0.95, 50, rng), around(loose, 0.6, 50, rng)])
    gallery = Gallery(enrolled, ["tight"] * 50 + ["loose"] * 50, [""] * 100, {"identity": "x"}, index_kind="exact")
    queries = np.concatenate(
        [around(tight, 0.95, 100, rng), around(loose, 0.6, 100, rng), around(tight, 0.8, 100, rng)]
    )
    truth = ["tight"] * 100 + ["loose"] * 100 + ["stranger"] * 100
    return gallery, queries, truth


def test_the_standardised_score_rejects_unknowns_that_one_similarity_cannot():
    gallery, queries, truth = tight_and_loose()
    stats = calibrate(gallery, queries, truth)
    assert stats["score"] == "standardised" and gallery.threshold_score == "standardised"
    assert stats["known_accepted"] >= 0.95 and stats["unknown_rejected"] > 0.9

    # The same constraint on the bare similarity: the strangers are more similar than loose images.
    best = label_scores(gallery, queries, 1)
    similarity = np.array([c[0][1] for c in best])
    correct = np.array([c[0][0] == t for c, t in zip(best, truth, strict=True)])
    unknown = np.array([t == "stranger" for t in truth])
    assert choose_threshold(similarity, correct, unknown)["unknown_rejected"] < 0.1

    answers = recognize(gallery, queries, [str(i) for i in range(300)])
    assert np.mean([a.label == "unknown" for a in answers[200:]]) > 0.9
    assert np.mean([a.label == t for a, t in zip(answers[:200], truth, strict=False)]) >= 0.95
    assert answers[0].to_json()["score"] == pytest.approx(answers[0].score)


def test_a_nearest_image_gallery_keeps_the_similarity():
    gallery, queries, truth = tight_and_loose()
    gallery.recognition = "nearest"
    assert calibrate(gallery, queries, truth)["score"] == "similarity"
    assert gallery.threshold_score == "similarity"


def test_an_older_gallery_keeps_comparing_its_threshold_with_the_similarity(tmp_path):
    gallery, queries, truth = tight_and_loose()
    gallery.threshold, gallery.calibration = 0.7, {"method": "from an older imgcls"}
    gallery.save(tmp_path / "g")
    head = json.loads((tmp_path / "g" / "gallery.json").read_text())
    del head["threshold_score"]  # as imgcls wrote it before the standardised score
    (tmp_path / "g" / "gallery.json").write_text(json.dumps(head))
    old = Gallery.load(tmp_path / "g")
    assert old.threshold_score == "similarity"
    answers = recognize(old, queries, [str(i) for i in range(300)])
    assert [a.label == "unknown" for a in answers] == [a.similarity < 0.7 for a in answers]

    calibrate(old, queries, truth)
    old.save(tmp_path / "g")
    assert Gallery.load(tmp_path / "g").threshold_score == "standardised"
