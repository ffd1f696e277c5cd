"""Sources: folder layouts, automatic stratified splits, Unicode classes, ignored files, errors."""

from __future__ import annotations

import io
import os
import threading
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from imgcls.data.resolve import resolve_evaluation_data, resolve_training_data
from imgcls.data.sources import list_images, stratified_split
from imgcls.errors import DataError


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png_bytes()


def _images(folder: Path, n: int, prefix: str = "img", ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}{ext}"
        path.write_bytes(PNG)
        paths.append(path)
    return paths


def _class_root(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        _images(root / name, n, prefix=f"{name}_")
    return root


def _by_class(samples, classes) -> dict[str, set[Path]]:
    out: dict[str, set[Path]] = {name: set() for name in classes}
    for s in samples:
        out[classes[s.label]].add(s.path)
    return out


def _paths(samples) -> set[Path]:
    return {s.path for s in samples}


# --- layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_train_and_val_folders(tmp_path, val_name):
    _class_root(tmp_path / "train", {"cat": 4, "dog": 3})
    _class_root(tmp_path / val_name, {"cat": 2, "dog": 1})
    src = resolve_training_data(tmp_path)
    assert src.classes == ("cat", "dog")
    assert src.test is None
    train, val = _by_class(src.train, src.classes), _by_class(src.val, src.classes)
    assert {k: len(v) for k, v in train.items()} == {"cat": 4, "dog": 3}
    assert {k: len(v) for k, v in val.items()} == {"cat": 2, "dog": 1}
    assert all(p.parent.parent == tmp_path / "train" for p in _paths(src.train))
    assert all(p.parent.parent == tmp_path / val_name for p in _paths(src.val))
    assert all(p.parent.name == src.classes[s.label] for s in src.train + src.val for p in [s.path])


def test_train_val_test_keeps_test(tmp_path):
    _class_root(tmp_path / "train", {"cat": 4, "dog": 4})
    _class_root(tmp_path / "val", {"cat": 1, "dog": 1})
    _class_root(tmp_path / "test", {"cat": 2, "dog": 3})
    src = resolve_training_data(tmp_path)
    assert src.test is not None
    test = _by_class(src.test, src.classes)
    assert {k: len(v) for k, v in test.items()} == {"cat": 2, "dog": 3}
    assert all(p.parent.parent == tmp_path / "test" for p in _paths(src.test))
    assert not _paths(src.test) & (_paths(src.train) | _paths(src.val))


def test_single_folder_is_split_stratified(tmp_path):
    counts = {"ant": 20, "bee": 40, "cow": 10}
    _class_root(tmp_path, counts)
    src = resolve_training_data(tmp_path, val_fraction=0.25, seed=7)
    assert src.classes == ("ant", "bee", "cow")
    assert src.test is None
    train, val = _by_class(src.train, src.classes), _by_class(src.val, src.classes)
    for name, n in counts.items():
        assert len(val[name]) == round(n * 0.25)  # every class gets its share in val
        assert len(train[name]) + len(val[name]) == n
        assert not train[name] & val[name]
        assert train[name] | val[name] == set((tmp_path / name).iterdir())
    assert not _paths(src.train) & _paths(src.val)


def test_split_is_deterministic_per_seed(tmp_path):
    _class_root(tmp_path, {"ant": 20, "bee": 20})
    first = resolve_training_data(tmp_path, seed=1)
    again = resolve_training_data(tmp_path, seed=1)
    other = resolve_training_data(tmp_path, seed=2)
    assert _paths(first.val) == _paths(again.val)
    assert first.train == again.train and first.val == again.val
    assert _paths(first.val) != _paths(other.val)
    assert len(first.val) == len(other.val) == 8


def test_train_folder_alone_is_split(tmp_path):
    _class_root(tmp_path / "train", {"cat": 10, "dog": 10})
    src = resolve_training_data(tmp_path, val_fraction=0.2, seed=0)
    assert src.classes == ("cat", "dog")
    val = _by_class(src.val, src.classes)
    assert {k: len(v) for k, v in val.items()} == {"cat": 2, "dog": 2}
    assert len(src.train) == 16
    assert not _paths(src.train) & _paths(src.val)
    assert all((tmp_path / "train") in p.parents for p in _paths(src.val))


def test_train_and_test_without_val_splits_train_keeps_test(tmp_path):
    _class_root(tmp_path / "train", {"cat": 10, "dog": 10})
    _class_root(tmp_path / "test", {"cat": 3, "dog": 3})
    src = resolve_training_data(tmp_path, val_fraction=0.2)
    assert len(src.val) == 4 and len(src.train) == 16
    assert src.test is not None and len(src.test) == 6
    assert all((tmp_path / "train") in p.parents for p in _paths(src.val))


def test_explicit_val_folder_no_split(tmp_path):
    _class_root(tmp_path / "data", {"cat": 10, "dog": 10})
    _class_root(tmp_path / "holdout", {"cat": 3, "dog": 2})
    src = resolve_training_data(tmp_path / "data", val=tmp_path / "holdout", val_fraction=0.5)
    assert src.classes == ("cat", "dog")
    assert len(src.train) == 20  # no image held out of training
    assert _paths(src.val) == set((tmp_path / "holdout").rglob("*.png"))
    val = _by_class(src.val, src.classes)
    assert {k: len(v) for k, v in val.items()} == {"cat": 3, "dog": 2}


def test_explicit_val_with_train_val_root_uses_train_folder(tmp_path):
    # DATA with the train/ layout plus --val: train/ is still the training set, the given
    # folder replaces val/ (the contract: "--val DATA: the given folder is the validation set").
    _class_root(tmp_path / "data" / "train", {"cat": 5, "dog": 5})
    _class_root(tmp_path / "data" / "val", {"cat": 1, "dog": 1})
    _class_root(tmp_path / "holdout", {"cat": 2, "dog": 2})
    src = resolve_training_data(tmp_path / "data", val=tmp_path / "holdout")
    assert src.classes == ("cat", "dog")
    assert len(src.train) == 10
    assert _paths(src.val) == set((tmp_path / "holdout").rglob("*.png"))


def test_explicit_val_missing_is_an_error(tmp_path):
    _class_root(tmp_path / "data", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match="nowhere"):
        resolve_training_data(tmp_path / "data", val=tmp_path / "nowhere")


# --- Unicode ---------------------------------------------------------------------------------


def test_unicode_class_names(tmp_path):
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    names = ["猫", "狗", "golden retriever", nfc]
    _class_root(tmp_path / "train", {name: 3 for name in names})
    _class_root(tmp_path / "val", {"猫": 1, "狗": 1, "golden retriever": 1})
    _images(tmp_path / "val" / nfd, 2, prefix="mac")  # the same class, typed on macOS
    src = resolve_training_data(tmp_path)
    assert set(src.classes) == set(names)
    assert len(src.classes) == 4
    val = _by_class(src.val, src.classes)
    assert {k: len(v) for k, v in val.items()} == {"猫": 1, "狗": 1, "golden retriever": 1, nfc: 2}
    assert all(p.name.startswith("mac") for p in val[nfc])


def test_nfd_training_folder_gives_nfc_class_name(tmp_path):
    nfd = unicodedata.normalize("NFD", "éclair")
    _class_root(tmp_path, {nfd: 5, "tart": 5})
    src = resolve_training_data(tmp_path)
    assert unicodedata.normalize("NFC", "éclair") in src.classes
    assert nfd not in src.classes


def test_same_class_in_nfc_and_nfd_loses_no_images(tmp_path):
    # Two folders whose names differ only in Unicode normalisation are one class: their images
    # must be merged (or the clash reported), never silently dropped.
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    _images(tmp_path / nfc, 3, prefix="nfc")
    _images(tmp_path / nfd, 4, prefix="nfd")
    _images(tmp_path / "tea", 5)
    try:
        src = resolve_training_data(tmp_path, val=None, val_fraction=0.2)
    except DataError as err:
        assert "café" in unicodedata.normalize("NFC", str(err))
        return
    assert len(src.train) + len(src.val) == 12


# --- what counts as an image -----------------------------------------------------------------


def test_hidden_and_non_image_files_ignored_upper_case_found(tmp_path):
    cat = tmp_path / "cat"
    expected = set(_images(cat, 2)) | set(_images(cat, 1, prefix="up", ext=".JPG"))
    expected |= set(_images(cat, 1, prefix="up", ext=".PNG")) | set(_images(cat, 1, prefix="mixed", ext=".Jpeg"))
    expected |= set(_images(cat / "nested" / "deeper", 1, prefix="deep"))  # recursive
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / "._img000.png").write_bytes(b"\0\5\26\7 resource fork")  # macOS AppleDouble file
    (cat / "notes.txt").write_text("not an image")
    (cat / "img.png.bak").write_bytes(PNG)
    _images(cat / ".ipynb_checkpoints", 2)
    _images(cat / "__MACOSX", 2)
    _images(cat / ".hidden", 1)

    found = list_images(cat)
    assert set(found) == expected
    assert found == sorted(found)
    assert len(found) == len(expected)  # no duplicates

    _images(tmp_path / "dog", 2)
    _images(tmp_path / ".ipynb_checkpoints" / "cat", 2)
    _images(tmp_path / "__MACOSX" / "dog", 2)
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("readme")
    src = resolve_training_data(tmp_path, val=tmp_path)
    assert src.classes == ("cat", "dog")
    assert _by_class(src.train, src.classes)["cat"] == expected


def _with_timeout(fn, seconds: float = 10.0):
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (symlink loop followed?)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_symlink_loop_does_not_hang(tmp_path):
    cat = tmp_path / "cat"
    images = set(_images(cat, 3))
    try:
        os.symlink(cat, cat / "loop", target_is_directory=True)
        os.symlink(tmp_path, cat / "up", target_is_directory=True)
        os.symlink("self.png", cat / "self.png")  # a link to itself
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not supported here")
    _images(tmp_path / "dog", 3)

    found = _with_timeout(lambda: list_images(cat))
    assert {p for p in found if p.parent == cat and p.name != "self.png"} == images
    real = [os.path.realpath(p) for p in found if p.name != "self.png"]
    assert len(real) == len(set(real))  # every real image listed once, however many links reach it

    src = _with_timeout(lambda: resolve_training_data(tmp_path, val=tmp_path))
    assert src.classes == ("cat", "dog")


# --- stratified_split ------------------------------------------------------------------------


def test_stratified_split_fraction_and_single_image_class():
    by_class = {
        "a": [Path(f"a/{i}.png") for i in range(10)],
        "b": [Path(f"b/{i}.png") for i in range(3)],
        "c": [Path("c/0.png")],
    }
    train, val = stratified_split(by_class, 0.3, seed=0)
    assert [len(val[k]) for k in "abc"] == [3, 1, 0]  # b: at least one, c: its only image trains
    assert [len(train[k]) for k in "abc"] == [7, 2, 1]
    for k, paths in by_class.items():
        assert set(train[k]) | set(val[k]) == set(paths)
        assert not set(train[k]) & set(val[k])
    assert stratified_split(by_class, 0.3, seed=0) == (train, val)


def test_stratified_split_keeps_one_training_image():
    by_class = {"a": [Path("a/0.png"), Path("a/1.png")]}
    train, val = stratified_split(by_class, 0.9, seed=0)
    assert len(train["a"]) == 1 and len(val["a"]) == 1


# --- errors ----------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no_such_data"):
        resolve_training_data(tmp_path / "no_such_data")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="data.zip"):
        resolve_training_data(tmp_path / "data.zip")


@pytest.mark.parametrize("counts", [{}, {"only": 5}])
def test_fewer_than_two_classes(tmp_path, counts):
    (tmp_path / "data").mkdir()
    _class_root(tmp_path / "data", counts)
    with pytest.raises(DataError, match="at least two class"):
        resolve_training_data(tmp_path / "data")


def test_empty_class_folder(tmp_path):
    _class_root(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="owl") as info:
        resolve_training_data(tmp_path)
    assert "no images" in str(info.value)


def test_validation_class_unknown_to_training(tmp_path):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    _class_root(tmp_path / "val", {"cat": 1, "dog": 1, "bird": 1})
    with pytest.raises(DataError, match="bird"):
        resolve_training_data(tmp_path)


def test_test_class_unknown_to_training(tmp_path):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    _class_root(tmp_path / "val", {"cat": 1, "dog": 1})
    _class_root(tmp_path / "test", {"cat": 1, "fox": 1})
    with pytest.raises(DataError, match="fox"):
        resolve_training_data(tmp_path)


def test_val_folder_without_images(tmp_path):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="val"):
        resolve_training_data(tmp_path)


# --- evaluation data -------------------------------------------------------------------------

CLASSES = ("cat", "dog")


def test_evaluation_uses_test_when_present(tmp_path):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    _class_root(tmp_path / "val", {"cat": 1, "dog": 1})
    _class_root(tmp_path / "test", {"cat": 2, "dog": 2})
    samples, folder = resolve_evaluation_data(tmp_path, CLASSES)
    assert folder == tmp_path / "test"
    assert _paths(samples) == set((tmp_path / "test").rglob("*.png"))
    assert all(CLASSES[s.label] == s.path.parent.name for s in samples)


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_evaluation_uses_val_without_test(tmp_path, val_name):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    _class_root(tmp_path / val_name, {"cat": 1, "dog": 2})
    samples, folder = resolve_evaluation_data(tmp_path, CLASSES)
    assert folder == tmp_path / val_name
    assert len(samples) == 3
    assert all(CLASSES[s.label] == s.path.parent.name for s in samples)


def test_evaluation_on_class_folders_uses_all(tmp_path):
    _class_root(tmp_path, {"cat": 3, "dog": 4})
    samples, folder = resolve_evaluation_data(tmp_path, CLASSES)
    assert folder == tmp_path
    assert len(samples) == 7
    assert all(CLASSES[s.label] == s.path.parent.name for s in samples)


def test_evaluation_labels_follow_training_class_order(tmp_path):
    _class_root(tmp_path, {"cat": 1, "dog": 2})
    samples, _ = resolve_evaluation_data(tmp_path, ("dog", "cat"))
    assert sorted(s.label for s in samples) == [0, 0, 1]
    assert all(("dog", "cat")[s.label] == s.path.parent.name for s in samples)


def test_evaluation_subset_of_classes_is_fine(tmp_path):
    _class_root(tmp_path, {"dog": 2})
    samples, _ = resolve_evaluation_data(tmp_path, CLASSES)
    assert {s.label for s in samples} == {1}


def test_evaluation_on_train_only_root_is_an_error(tmp_path):
    _class_root(tmp_path / "train", {"cat": 3, "dog": 3})
    with pytest.raises(DataError, match="test/"):
        resolve_evaluation_data(tmp_path, CLASSES)


def test_evaluation_unknown_class_is_an_error(tmp_path):
    _class_root(tmp_path, {"cat": 1, "emu": 1})
    with pytest.raises(DataError, match="emu"):
        resolve_evaluation_data(tmp_path, CLASSES)


def test_evaluation_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="gone"):
        resolve_evaluation_data(tmp_path / "gone", CLASSES)


def test_evaluation_without_images_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError):
        resolve_evaluation_data(tmp_path, CLASSES)


def test_a_class_named_train_is_a_class(tmp_path):
    """Only a train/ folder holding class folders means the train/ val/ layout."""
    from PIL import Image

    for name in ("train", "car"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    sources = resolve_training_data(tmp_path, val_fraction=0.2, seed=0)
    assert set(sources.classes) == {"train", "car"}
    assert len(sources.train) + len(sources.val) == 10
