"""Built-in datasets: digits end to end, Fashion-MNIST readers on small generated IDX files."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from imgcls.data import builtin
from imgcls.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    image_file, label_file = FILES[split]
    n, rows, cols = images.shape
    header = b"".join(v.to_bytes(4, "big") for v in (2051, n, rows, cols))
    (folder / image_file).write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))
    header = b"".join(v.to_bytes(4, "big") for v in (2049, n))
    (folder / label_file).write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    data = {}
    for split, n in (("train", 7), ("test", 5)):
        data[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
        write_idx(folder, split, *data[split])
    monkeypatch.setenv("IMGCLS_FASHION_MNIST", str(folder))
    return folder, data


def test_digits_load():
    images, labels = builtin.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 255
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.slow
def test_get_digits_writes_class_folders_that_decode_exactly(tmp_path):
    info = builtin.get_dataset("digits", tmp_path)
    assert info["counts"] == {"train": 1437, "test": 360}
    assert info["classes"] == [str(d) for d in range(10)] and info["source"] == "scikit-learn"
    for split, count in info["counts"].items():
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == info["classes"]
        assert len(list((tmp_path / split).glob("*/*.png"))) == count
    # Files are named by index in the split, so recompute the split and compare pixels.
    images, labels = builtin.load_digits()
    _, x_test, _, y_test = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    for i in (0, 1, 359):
        png = Image.open(tmp_path / "test" / str(y_test[i]) / f"{i:05d}.png")
        assert png.mode == "L" and np.array_equal(np.asarray(png), x_test[i])


def test_write_class_folders_round_trip_and_overwrite(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([1, 1, 0])
    names = ["T-shirt/top", "Ankle boot", "empty"]
    for _ in range(2):  # writing twice overwrites the same files
        assert builtin.write_class_folders(images, labels, names, tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Ankle boot", "T-shirt_top", "empty"]
    assert sorted(p.name for p in (tmp_path / "Ankle boot").iterdir()) == ["00000.png", "00001.png"]
    img = Image.open(tmp_path / "T-shirt_top" / "00002.png")
    assert img.mode == "L" and np.array_equal(np.asarray(img), images[2])


def test_class_folder_name():
    assert "/" not in builtin.class_folder_name("T-shirt/top")
    assert builtin.class_folder_name("T-shirt/top") == "T-shirt_top"
    assert builtin.class_folder_name("Ankle boot") == "Ankle boot"


def test_fake_fashion_round_trip(fake_fashion):
    folder, data = fake_fashion
    assert builtin.find_fashion_mnist() == folder
    for split, (images, labels) in data.items():
        got_images, got_labels = builtin.load_fashion_mnist(split)
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
        assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)


def test_corrupt_idx_names_the_file(fake_fashion):
    folder, _ = fake_fashion
    bad = folder / FILES["test"][0]
    bad.write_bytes(gzip.compress(b"\x00\x00\x09\x99" + bytes(20)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*magic"):
        builtin.load_fashion_mnist("test")


def test_truncated_and_non_gzip_files_name_the_file(fake_fashion):
    folder, _ = fake_fashion
    labels = folder / FILES["train"][1]
    labels.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\1"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*truncated"):
        builtin.load_fashion_mnist("train")
    labels.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        builtin.load_fashion_mnist("train")


def test_no_local_copy_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGCLS_FASHION_MNIST", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert builtin.find_fashion_mnist() is None
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        builtin.load_fashion_mnist("test")


def test_download_moves_files_into_the_cache(tmp_path, monkeypatch):
    import torchvision.datasets as torchvision_datasets

    monkeypatch.delenv("IMGCLS_FASHION_MNIST", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images, labels = np.zeros((2, 28, 28), np.uint8), np.array([3, 4])

    def fake_fashion_mnist(root, train, download):  # stands in for the network
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        write_idx(raw, "train" if train else "test", images, labels)

    monkeypatch.setattr(torchvision_datasets, "FashionMNIST", fake_fashion_mnist)
    info = builtin.get_dataset("fashion-mnist", tmp_path / "out", download=True)
    assert info["source"] == "download" and info["counts"] == {"train": 2, "test": 2}
    assert builtin.find_fashion_mnist() == tmp_path / "cache" / "imgcls" / "fashion-mnist"
    assert builtin.get_dataset("fashion-mnist", tmp_path / "out")["source"] == "cache"
    test_dir = tmp_path / "out" / "test"
    written = sorted(str(p.relative_to(test_dir)) for p in test_dir.rglob("*.png"))
    assert written == ["Coat/00001.png", "Dress/00000.png"]


def test_unknown_names_are_rejected(tmp_path, fake_fashion):
    with pytest.raises(DataError, match="fashion-mnist, digits"):
        builtin.get_dataset("cifar-10", tmp_path)
    with pytest.raises(DataError, match="'train' or 'test'"):
        builtin.load_fashion_mnist("val")


def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("IMGCLS_FASHION_MNIST", raising=False)
    if not (builtin.DEBIAN_DIR / FILES["test"][0]).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Fashion-MNIST is not installed in {builtin.DEBIAN_DIR}")
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({builtin.DEBIAN_DIR})")
    images, labels = builtin.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
