"""The data doctor's detectors on small generated cases with known answers, negatives included."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.doctor import near as doctor_near
from imgcls.doctor.check import check_dataset, parse_kinds, problems, summary_lines
from imgcls.doctor.crops import align_crops
from imgcls.doctor.hamming import hamming_cross, hamming_pairs
from imgcls.doctor.labels import find_label_errors
from imgcls.doctor.near import SIDE, NearThresholds
from imgcls.errors import ConfigError


def pattern(seed: int, side: int = 48) -> np.ndarray:
    """A smooth grey picture with structure (a 5x5 random grid, upsampled): distinct seeds look distinct."""
    grid = np.random.default_rng(seed).integers(0, 256, (5, 5), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((side, side), Image.BICUBIC))


def save(pixels: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def near_copy(pixels: np.ndarray) -> np.ndarray:
    """The same picture, enlarged 1.5x and re-encoded as JPEG at quality 75."""
    img = Image.fromarray(pixels)
    img = img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=75)
    return np.asarray(Image.open(buffer))


def texture(seed: int, side: int = 64) -> np.ndarray:
    """A grey picture with coarse and fine structure (random grids, upsampled): distinct seeds look distinct."""
    rng = np.random.default_rng(seed)
    coarse, fine = (
        np.asarray(Image.fromarray(rng.integers(0, 256, (k, k), dtype=np.uint8)).resize((side, side), Image.BICUBIC))
        for k in (6, 16)
    )
    return (0.7 * coarse + 0.3 * fine).astype(np.uint8)


@pytest.mark.parametrize(("rows", "cols"), [(7, 13), (8, 16), (128, 4096)])  # odd blocks, 8-hit words, default
def test_hamming_pairs_is_exact_across_block_edges(rows, cols):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[250] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart, in different row and column blocks
    hashes[17] = hashes[16]  # identical, at a block edge
    got = hamming_pairs(hashes, 4, rows=rows, cols=cols)
    brute = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(300)
        for j in range(i + 1, 300)
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 4
    }
    assert set(zip(*(a.tolist() for a in got), strict=True)) == brute
    assert {(3, 250, 3), (16, 17, 0)} <= brute

    queries = hashes ^ np.uint64(1)  # every query 1 bit from its own hash: itself is never a pair
    got = hamming_cross(queries, hashes, 5, rows=rows, cols=cols)
    brute = {
        (i, j, bin(int(queries[i]) ^ int(hashes[j])).count("1"))
        for i in range(300)
        for j in range(300)
        if i != j and bin(int(queries[i]) ^ int(hashes[j])).count("1") <= 5
    }
    assert set(zip(*(a.tolist() for a in got), strict=True)) == brute
    assert {(3, 250, 2), (250, 3, 2), (16, 17, 1), (17, 16, 1)} <= brute  # both orders; never itself


def test_align_crops_recovers_the_cut():
    """Thumbnails of a picture and of copies with known cuts: the alignment finds the cut (thumbnail px)."""
    big = Image.fromarray(texture(7, 256))
    thumb = [np.asarray(big.resize((SIDE, SIDE), Image.BILINEAR))]
    cuts = [(8, 8, 8, 8), (16, 0, 0, 0), (0, 12, 6, 0), (4, 0, 4, 20)]  # of 256 px: 3%, 6%, 5% and 2%, 8%
    for left, top, right, bottom in cuts:
        copy = big.crop((left, top, 256 - right, 256 - bottom)).resize((SIDE, SIDE), Image.BILINEAR)
        thumb.append(np.asarray(copy))
    thumbs = np.stack(thumb)
    n = len(cuts)
    rms, boxes = align_crops(thumbs, np.zeros(n, int), np.arange(1, n + 1), np.zeros((n, 4)))
    assert np.abs(boxes - np.array(cuts) * SIDE / 256).max() < 0.35  # within a third of a thumbnail pixel
    assert rms.max() < 0.01


@pytest.fixture
def near_root(tmp_path: Path) -> Path:
    """train/test with 3 classes of distinct patterns, plus a planted near leak, near conflict and a
    similar-but-distinct image (same pattern with a bright patch) that must not be flagged."""
    root = tmp_path / "near"
    for k, name in enumerate(["a", "b", "c"]):
        for i in range(6):
            save(pattern(100 * k + i), root / "train" / name / f"{i}.png")
            save(pattern(100 * k + i + 50), root / "test" / name / f"{i}.png")
    save(near_copy(pattern(0)), root / "test" / "a" / "leak.jpg")  # near-copy of train/a/0.png
    save(near_copy(pattern(101)), root / "train" / "c" / "conflict.jpg")  # near-copy of train/b/1.png, class c
    patched = pattern(2).copy()
    patched[16:32, 16:32] = 255 - patched[16:32, 16:32]  # another "print" on the same garment
    save(patched, root / "train" / "a" / "patched.png")
    save(np.fliplr(pattern(3)).copy(), root / "train" / "a" / "mirrored.png")
    return root


def _names(pair: dict) -> set[str]:
    return {
        f"{pair['a']['split']}/{pair['a']['label']}/{Path(pair['a']['path']).name}",
        f"{pair['b']['split']}/{pair['b']['label']}/{Path(pair['b']['path']).name}",
    }


def test_near_duplicates_leakage_and_conflicts_but_not_similar_images(near_root):
    report = check_dataset(near_root, label_errors=False)
    pairs = [_names(p) for p in report["near_duplicates"]]
    assert sorted(pairs, key=sorted) == sorted(
        [{"train/a/0.png", "test/a/leak.jpg"}, {"train/b/1.png", "train/c/conflict.jpg"}], key=sorted
    )
    assert [_names(p) for p in report["near_leakage"]] == [{"train/a/0.png", "test/a/leak.jpg"}]
    assert report["near_leakage_counts"] == {"test/train": 1}
    assert [_names(p) for p in report["near_conflicts"]] == [{"train/b/1.png", "train/c/conflict.jpg"}]
    assert report["exact_duplicates"] == []  # re-encoded copies are near, not exact
    assert report["findings"]["leakage"] == 1 and report["findings"]["conflict"] == 1


@pytest.fixture
def crop_root(tmp_path: Path) -> Path:
    """train: textured pictures at 64 and 28 px; test: distinct ones, slightly cropped copies of some train
    pictures (saved at the smaller size, rescaled back, zoomed), and look-alikes that are not copies."""
    root = tmp_path / "crops"
    for k in range(8):
        save(texture(k), root / "train" / "a" / f"{k}.png")
        save(texture(200 + k, 28), root / "train" / "b" / f"small{k}.png")
        save(texture(100 + k), root / "test" / "a" / f"other{k}.png")
    copies = {
        "crop2.png": Image.fromarray(texture(0)).crop((2, 2, 62, 62)),  # 2 px (3%) off each side, saved at 60 px
        "left3.png": Image.fromarray(texture(1)).crop((3, 0, 64, 64)),  # 3 px (5%) off one side
        "corner.png": Image.fromarray(texture(2)).crop((0, 2, 62, 64)).resize((64, 64), Image.BICUBIC),  # rescaled
        "zoom.jpg": Image.fromarray(texture(3)).crop((3, 3, 61, 61)).resize((96, 96), Image.BICUBIC),  # zoomed, JPEG
        "small1.png": Image.fromarray(texture(200, 28)).crop((1, 1, 27, 27)),  # 1 px of 28 off each side
        "small2.png": Image.fromarray(texture(201, 28)).crop((1, 0, 28, 27)),  # 1 px off two sides
    }
    for name, img in copies.items():
        img.save(root / "test" / "a" / name)
    patched = texture(5).copy()
    patched[20:44, 20:44] = 255 - patched[20:44, 20:44]  # the same picture with another print
    save(patched, root / "test" / "a" / "patched.png")
    save(np.fliplr(texture(6)).copy(), root / "test" / "a" / "mirrored.png")
    save(texture(7)[8:56, 8:56].copy(), root / "test" / "a" / "bigcrop.png")  # 12.5% off each side: not slight
    return root


def test_cropped_copies_are_found_and_distinct_images_are_not(crop_root):
    report = check_dataset(crop_root, label_errors=False)
    found = {frozenset(_names(p)): p for p in report["near_duplicates"]}
    expected = {
        ("train/a/0.png", "test/a/crop2.png"): (3.1, 3.1, 3.1, 3.1),  # percent off left, top, right, bottom
        ("train/a/1.png", "test/a/left3.png"): (4.7, 0, 0, 0),
        ("train/a/2.png", "test/a/corner.png"): (0, 3.1, 3.1, 0),
        ("train/a/3.png", "test/a/zoom.jpg"): (4.7, 4.7, 4.7, 4.7),
        ("train/b/small0.png", "test/a/small1.png"): (3.6, 3.6, 3.6, 3.6),
        ("train/b/small1.png", "test/a/small2.png"): (3.6, 0, 0, 3.6),
    }
    assert set(found) == {frozenset(pair) for pair in expected}  # no look-alike, mirror or big crop
    for (original, _), percent in expected.items():
        pair = found[frozenset((original, _))]
        cut_from = pair[pair["cropped"]["from"]]
        assert f"{cut_from['split']}/{cut_from['label']}/{Path(cut_from['path']).name}" == original
        assert np.allclose(list(pair["cropped"]["percent"].values()), percent, atol=1.0)
        assert pair["cropped"]["aligned"] <= NearThresholds().crop_pixels
        assert pair["pixels"] > NearThresholds().pixels  # as they are, the thumbnails differ too much
    assert len(report["near_leakage"]) == 6 and report["near_leakage_counts"] == {"test/train": 6}
    assert "6 near-duplicate pair(s) (6 where one is a slightly cropped copy of the other)" in problems(report)
    assert any(line.endswith("(cropped)") for line in summary_lines(report))
    assert report["near_duplicate_search"]["crop_fitted"] >= 6
    assert json.loads(json.dumps(report))["near_duplicates"][0]["cropped"]["from"] in ("a", "b")
    from imgcls.doctor.html import render_html

    page = render_html(report)  # a crop is described by its cut, not by the unaligned difference
    assert page.count("cropped copy of the") >= 6 and "left 5% cut off" in page  # in leakage and near-duplicates


def test_without_the_crop_search_cropped_copies_are_missed(crop_root, monkeypatch):
    report = check_dataset(crop_root, near=NearThresholds(crop_pixels=None), label_errors=False)
    assert report["near_duplicates"] == []
    assert report["thresholds"]["near_duplicates"]["crop_pixels"] is None
    monkeypatch.setattr(doctor_near, "CROP_MAX_IMAGES", 20)  # too many images for the crop search: said
    report = check_dataset(crop_root, label_errors=False)
    assert report["near_duplicates"] == [] and "not searched" in report["near_duplicate_search"]["crop_skipped"]
    assert any("cropped copies not searched" in line for line in summary_lines(report))


def test_near_duplicates_can_be_switched_off(near_root):
    report = check_dataset(near_root, near=None, label_errors=False)
    assert report["near_duplicates"] == [] and report["findings"]["near-duplicate"] == 0


def test_inventory_counts_tiny_grey_exif_and_imbalance(tmp_path):
    root = tmp_path / "inv"
    for i in range(12):
        save(np.stack([pattern(i, 32)] * 3, axis=-1), root / "big" / f"{i}.png")
    save(pattern(50, 32), root / "small" / "grey.png")  # mode L
    save(pattern(51, 10), root / "small" / "tiny.png")  # 10x10: tiny
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees when shown
    rotated = Image.fromarray(np.stack([pattern(52, 32)[:, :20]] * 3, axis=-1))
    rotated.save(root / "small" / "rotated.jpg", exif=exif)
    report = check_dataset(root, label_errors=False)
    info = report["splits"]["all"]
    assert info["classes"] == {"big": 12, "small": 3} and info["imbalance_ratio"] == 4.0
    small = info["by_class"]["small"]
    assert small["grey"] == 2 and small["colour"] == 1 and small["tiny"] == 1 and small["exif_rotated"] == 1
    assert small["formats"] == {"PNG": 2, "JPEG": 1}
    assert small["width"]["max"] == 32 and small["height"]["max"] == 32  # the rotated 20x32 is shown 32x20
    assert info["by_class"]["big"]["tiny"] == 0 and info["by_class"]["big"]["exif_rotated"] == 0
    assert [Path(p).name for p in report["tiny_images"]] == ["tiny.png"]
    assert report["findings"]["imbalance"] == 0  # 4x is under the 10x threshold
    for i in range(12, 40):
        save(np.stack([pattern(i, 32)] * 3, axis=-1), root / "big" / f"{i}.png")
    assert check_dataset(root, label_errors=False)["findings"]["imbalance"] == 1  # 40 / 3 >= 10


def test_label_errors_name_given_and_suggested_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 20)) * 4
    labels = [name for name in ("cat", "dog", "owl") for _ in range(60)]
    features = np.concatenate([centres[k] + rng.normal(0, 1, (60, 20)) for k in range(3)])
    clean = find_label_errors(features, labels)
    assert clean["checked"] == 180 and clean["issues"] == []
    # true classes: 0-59 cat, 60-119 dog, 120-179 owl
    flipped = {5: "dog", 6: "owl", 70: "owl", 71: "cat", 130: "cat", 131: "dog"}
    truth = {5: "cat", 6: "cat", 70: "dog", 71: "dog", 130: "owl", 131: "owl"}
    noisy = [flipped.get(i, name) for i, name in enumerate(labels)]
    found = find_label_errors(features, noisy)
    by_index = {issue["index"]: issue for issue in found["issues"]}
    # Confident learning counts an image only above its class's mean self-confidence, so on
    # clean clusters it can miss a flip whose probability is a hair under; it must not invent any.
    assert set(by_index) <= set(flipped) and len(by_index) >= 4
    assert all((by_index[i]["given"], by_index[i]["suggested"]) == (flipped[i], truth[i]) for i in by_index)
    assert all(issue["suggested_probability"] > issue["given_probability"] for issue in found["issues"])


def test_label_errors_sample_is_capped_and_said():
    rng = np.random.default_rng(1)
    labels = ["a"] * 50 + ["b"] * 50
    features = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(5, 1, (50, 4))])
    result = find_label_errors(features, labels, max_images=40)
    assert result["checked"] == 40 and "60 image(s) not checked" in result["skipped_reason"]
    single = find_label_errors(features[:50], labels[:50])
    assert single["checked"] == 0 and single["skipped_reason"]


def test_fail_on_kinds_are_validated():
    assert parse_kinds("leakage, corrupt") == ("leakage", "corrupt")
    assert "label-error" in parse_kinds("all")
    with pytest.raises(ConfigError, match="leak"):
        parse_kinds("leak")


def test_plan_moves_a_near_leak_into_train_and_drops_near_conflicts(near_root, tmp_path):
    from imgcls.doctor.fix import apply_plan, plan_actions, write_plan

    rows = {row["path"]: row for row in plan_actions(check_dataset(near_root, label_errors=False))}
    assert (rows["test/a/leak.jpg"]["action"], rows["test/a/leak.jpg"]["target"]) == ("move", "train/a/leak.jpg")
    assert rows["train/b/1.png"]["action"] == rows["train/c/conflict.jpg"]["action"] == "drop"
    assert set(rows) == {"test/a/leak.jpg", "train/b/1.png", "train/c/conflict.jpg"}  # nothing else proposed
    write_plan(list(rows.values()), tmp_path / "plan.csv")
    assert (near_root / "test/a/leak.jpg").is_file()  # writing a plan changes nothing
    result = apply_plan(tmp_path / "plan.csv")
    assert result["applied"] == {"move": 1, "drop": 2}
    assert not (near_root / "test/a/leak.jpg").exists() and (near_root / "train/a/leak.jpg").is_file()
    backup = Path(result["backup"])
    assert backup.parent == near_root.parent and backup.name.startswith("near.doctor-backup-")
    assert (backup / "test/a/leak.jpg").is_file() and (backup / "train/c/conflict.jpg").is_file()
