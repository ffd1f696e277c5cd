"""The data doctor's detectors on small generated cases with known answers, negatives included."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.doctor import check_dataset, parse_kinds
from imgcls.data.doctor_labels import find_label_errors
from imgcls.data.doctor_near import hamming_pairs
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


def test_hamming_pairs_is_exact_across_block_edges():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[250] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart, in different row and column blocks
    hashes[17] = hashes[16]  # identical, at a block edge
    got = hamming_pairs(hashes, 4, rows=7, cols=13)
    brute = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(300)
        for j in range(i + 1, 300)
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 4
    }
    assert set(zip(*(a.tolist() for a in got), strict=True)) == brute
    assert {(3, 250, 3), (16, 17, 0)} <= brute


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
    return {f"{pair['a']['split']}/{pair['a']['label']}/{Path(pair['a']['path']).name}",
            f"{pair['b']['split']}/{pair['b']['label']}/{Path(pair['b']['path']).name}"}  # fmt: skip


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
    from imgcls.data.doctor_fix import apply_plan, plan_actions, write_plan

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
