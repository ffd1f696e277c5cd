"""Tar shards: written from class folders, read back bit-exact, trained on like a folder."""

from __future__ import annotations

import json
import tarfile

import pytest

from imgcls.cli.main import main
from imgcls.data.cache import build_cache
from imgcls.data.resolve import resolve_training_data
from imgcls.data.shards import parse_size, read_index, shard_sources, write_shards
from imgcls.data.sources import list_images
from imgcls.errors import DataError
from tests.helpers import make_class_folders


def test_parse_size():
    assert parse_size("500MB") == 500 * 2**20
    assert parse_size("1.5 GB") == int(1.5 * 2**30)
    assert parse_size("100kB") == 100 * 1024 and parse_size("4096") == 4096
    with pytest.raises(DataError, match="500MB"):
        parse_size("lots")


def test_shards_hold_every_image_with_its_class(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10, junk=False)
    index = write_shards(data, tmp_path / "shards", shard_bytes=3000)  # small: several shards
    train = index["splits"]["train"]
    assert len(train["shards"]) > 1 and train["count"] == 30
    members = {}
    for shard in train["shards"]:
        with tarfile.open(tmp_path / "shards" / shard["file"]) as tar:
            names = tar.getnames()
            for name, label in shard["members"]:
                key = name.split(".")[0]
                assert f"{key}.cls" in names
                assert tar.extractfile(f"{key}.cls").read().decode() == str(label)
                members[key] = tar.extractfile(name).read()
    originals = sorted(p.read_bytes() for p in list_images(data))
    assert sorted(members.values()) == originals  # the original bytes, never re-encoded
    assert not list((tmp_path / "shards").glob("*.tmp"))
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(data, tmp_path / "shards")


def test_shards_decode_like_the_folder(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=8, junk=False)
    write_shards(data, tmp_path / "shards", shard_bytes=4000)
    from_folder = resolve_training_data(data, val_fraction=0.25, seed=0)
    from_shards = shard_sources(tmp_path / "shards", None, val_fraction=0.25, seed=0)
    assert from_shards.classes == from_folder.classes
    a = build_cache(from_folder.train, size=16, workers=1)
    b = build_cache(from_shards.train, size=16, workers=2)
    assert len(a) == len(b) == 18
    # Same images (order may differ): compare sorted per-image byte strings with their labels.
    key = lambda cache: sorted((int(y), x.tobytes()) for x, y in zip(cache.images, cache.labels, strict=True))  # noqa: E731
    assert key(a) == key(b)


@pytest.mark.slow
def test_train_and_evaluate_from_shards(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=16, junk=False)
    assert main(["-q", "data", "shard", str(data), "--out", str(tmp_path / "shards"), "--shard-size", "8kB"]) == 0
    assert "train: 48 images" in capsys.readouterr().out
    run = tmp_path / "run"
    args = ["-q", "train", str(tmp_path / "shards"), "--out", str(run), "--img-size", "16", "--epochs", "2"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_samples"] > 0 and metrics["skipped_files"] == []
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(tmp_path / "shards"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["num_samples"] == 48


def test_a_damaged_index_is_a_clear_error(tmp_path):
    (tmp_path / "index.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(DataError, match="imgcls-shards/1"):
        read_index(tmp_path)
