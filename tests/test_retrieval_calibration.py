"""Open-set calibration under a stated constraint: keep a share of the known images accepted,
then reject as many unknowns as possible; the trade-off table; a warning when the chosen point
turns away more than a fifth of the known images."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from imgcls.cli.main import main
from imgcls.retrieval.commands import describe_calibration
from imgcls.retrieval.gallery import Gallery
from imgcls.retrieval.recognize import calibrate, choose_threshold


def overlapping(seed: int = 0):
    """Known and unknown queries whose similarities overlap, as with a model that never saw
    either kind: maximising balanced accuracy accepts few known images here."""
    rng = np.random.default_rng(seed)
    similarity = np.concatenate([rng.normal(0.7, 0.1, 200), rng.normal(0.65, 0.1, 200)])
    correct = np.concatenate([rng.random(200) < 0.5, np.zeros(200, bool)])
    unknown = np.repeat([False, True], 200)
    return similarity, correct, unknown


@pytest.mark.parametrize("keep", [0.95, 0.8, 0.5])
def test_threshold_keeps_the_known_share_and_rejects_the_most_unknowns(keep):
    similarity, correct, unknown = overlapping()
    stats = choose_threshold(similarity, correct, unknown, keep_known=keep)
    assert stats["known_accepted"] >= keep
    # No threshold meeting the constraint rejects more unknowns (brute force over all of them).
    best_possible = max(
        (similarity[unknown] < t).mean() for t in similarity if (similarity[~unknown] >= t).mean() >= keep
    )
    assert stats["unknown_rejected"] == pytest.approx(best_possible)


def test_balanced_accuracy_alone_would_turn_most_known_images_away():
    similarity, correct, unknown = overlapping()
    stats = choose_threshold(similarity, correct, unknown)
    balanced = stats["tradeoff"][-1]
    assert balanced["keep_known"] == "best balanced accuracy" and balanced["known_accepted"] < 0.5
    assert stats["known_accepted"] >= 0.95
    shares = [row["keep_known"] for row in stats["tradeoff"][:-1]]
    accepted = [row["known_accepted"] for row in stats["tradeoff"][:-1]]
    assert all(a >= s for a, s in zip(accepted, shares, strict=True))
    rejected = [row["unknown_rejected"] for row in stats["tradeoff"][:-1]]
    assert rejected == sorted(rejected)  # keeping fewer known images rejects at least as many unknowns


def test_description_prints_the_tradeoff_table():
    text = describe_calibration(choose_threshold(*overlapping()))
    lines = text.splitlines()
    assert "keeps 95% of known images accepted" in lines[0]
    assert "unknown rejected" in lines[2]
    assert [line.split()[0] for line in lines[3:9]] == ["100%", "99%", "95%", "90%", "80%", "50%"]
    assert lines[9].strip().startswith("best balanced accuracy")


def test_calibration_warns_when_it_rejects_more_than_a_fifth_of_known_images(caplog):
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2]
    enrolled = (centres.repeat(5, 0) + 0.01 * rng.standard_normal((10, 8))).astype(np.float32)
    enrolled /= np.linalg.norm(enrolled, axis=1, keepdims=True)
    gallery = Gallery(enrolled, ["a"] * 5 + ["b"] * 5, [f"{i}.png" for i in range(10)], {"identity": "x"})
    queries = rng.standard_normal((40, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = ["a"] * 10 + ["b"] * 10 + ["c"] * 20
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        calibrate(gallery, queries, truth)
    assert not [r for r in caplog.records if "rejects" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        stats = calibrate(gallery, queries, truth, keep_known=0.6)
    assert stats["known_accepted"] < 0.8
    (warning,) = [r.getMessage() for r in caplog.records if "rejects" in r.getMessage()]
    assert "of the known images as unknown" in warning


@pytest.mark.parametrize("value", ["0", "1.5", "x"])
def test_keep_known_outside_zero_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["gallery", "calibrate", str(tmp_path), str(tmp_path), "--keep-known", value])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
