"""Combinations of options that cannot work are refused before any image is decoded."""

from __future__ import annotations

import pytest

import imgcls.training.run as run_module
from imgcls.cli.main import main


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded before the options were checked")

    monkeypatch.setattr(run_module, "build_cache", refuse)


@pytest.mark.parametrize(
    "option, key",
    [
        ("train.accumulate=2", "train.accumulate"),
        ("augment.mixup=0.2", "augment.mixup"),
        ("augment.cutmix=1.0", "augment.cutmix"),
    ],
)
def test_semi_supervised_refusals_name_one_key_before_decoding(
    class_folders, tmp_path, capsys, no_decoding, option, key
):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    args = ["train", str(class_folders), "--unlabeled", str(unlabeled), "--set", option, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err and "--unlabeled" in err


def test_multilabel_refusals_name_one_key_before_decoding(tmp_path, capsys, no_decoding):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{i}.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,labels\n" + "".join(f"img/{i}.png,a;b\n" for i in range(4)))
    args = ["train", str(manifest), "--set", "train.label_smoothing=0.1", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "train.label_smoothing assumes one class per image" in capsys.readouterr().err
