"""Models by every name the articles use: torchvision's light families, timm models with their
derived minimum input side, and the user's own nn.Module (and the rule that a checkpoint's
metadata alone never imports code)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls.cli.main import main
from imgcls.errors import ConfigError, ModelNotFoundError
from imgcls.models import registry, user_models
from imgcls.models.registry import create_model, list_models, register_model, resolve
from tests.helpers import make_class_folders, write_png

ROOT = Path(__file__).parent.parent
TORCHVISION = registry.torchvision_names()


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_has_timms_interface_on_grey_images(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_chans=1, img_size=32)
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    logits = model.forward_head(features)
    assert logits.shape == (2, 4)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    logits.sum().backward()
    assert model.get_classifier().weight.grad.abs().sum() > 0
    first = next(p for p in model.parameters())
    assert first.shape[1] == 1 and first.grad.abs().sum() > 0  # the grey first convolution learns
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_head(model.forward_features(x)), atol=1e-5)
    model.reset_classifier(6)
    with torch.no_grad():
        assert model(x).shape == (2, 6)


@pytest.mark.parametrize("name", ["torchvision:squeezenet1_1", "torchvision:googlenet", "inception_v3"])
def test_derived_min_size_is_the_smallest_side_that_runs(name):
    side = resolve(name).min_size
    assert side > 1
    model = create_model(name, num_classes=3, img_size=side).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, side, side)).shape == (2, 3)
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 3, side - 1, side - 1))


def test_inception_v3_needs_75_px_as_torchvision_documents():
    assert resolve("inception_v3").min_size == 75


def test_too_small_img_size_for_a_timm_model_is_one_line_before_decoding(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=2, junk=False)
    code = main(["train", str(data), "--model", "inception_v3", "--img-size", "32", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "imgcls: error: model 'inception_v3' needs images of at least 75 px; got 32."
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_torchvision_state_dict_loads_by_name_through_pretrained(tmp_path):
    import torchvision

    from imgcls.training.transfer import load_pretrained

    source = torchvision.models.shufflenet_v2_x0_5(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model("torchvision:shufflenet_v2_x0_5", num_classes=3)
    loaded, skipped = load_pretrained(model, tmp_path / "w.pth")
    assert skipped == ["fc.weight", "fc.bias"]  # 1000 classes do not fit 3
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert len(loaded) == len(source.state_dict()) - 2


def test_no_shufflenet_v1_in_torchvision_says_so():
    with pytest.raises(ConfigError, match="no ShuffleNet v1"):
        create_model("torchvision:shufflenet_v1", num_classes=3)


def test_models_listing_shows_torchvision_and_says_there_is_no_v1(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in TORCHVISION:
        assert re.search(rf"^{re.escape(name)} +\d+\.\d\d M ", out, re.M), name
    assert "no ShuffleNet v1" in out
    assert "torchvision:googlenet" in dict(list_models("googlenet"))


def test_unknown_model_suggests_each_name_once():
    with pytest.raises(ModelNotFoundError) as info:
        resolve("resnet-18")
    suggestions = str(info.value).split("Close matches: ")[1].split(".")[0].split(", ")
    assert "resnet18" in suggestions
    assert len(suggestions) == len(set(suggestions))


class Plain(nn.Module):
    def __init__(self, num_classes, in_chans=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def test_plain_module_gets_timms_interface_from_its_last_linear(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY})  # plain-test is forgotten afterwards
    register_model("plain-test", Plain)
    model = create_model("plain-test", num_classes=5, in_chans=1, img_size=16).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(embedding, model.net.body(x))
        assert torch.allclose(model.get_classifier()(embedding), model(x))
    assert model.num_features == 8
    model.reset_classifier(2)
    assert model(x).shape == (3, 2)


def test_own_module_with_wrong_outputs_or_no_linear_is_one_clear_error():
    wrong = registry.user_models.user_builder(lambda: nn.Sequential(nn.Flatten(), nn.Linear(3, 7)), "m:wrong")
    with pytest.raises(ConfigError, match="gives 7 outputs for 3 classes"):
        wrong(num_classes=3)
    no_linear = registry.user_models.user_builder(lambda num_classes: nn.Conv2d(3, num_classes, 1), "m:conv")
    with pytest.raises(ConfigError, match="no nn.Linear"):
        no_linear(num_classes=3)


MODULE = """
from pathlib import Path
from torch import nn
Path(__file__).with_name("imported.marker").touch()  # proof the module's code ran

class TinyNet(nn.Module):
    def __init__(self, num_classes, in_chans=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `usernets_test` on sys.path whose import leaves a marker file; forgotten afterwards."""
    (tmp_path / "usernets_test.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(user_models, "_trusted", set())
    monkeypatch.delenv(user_models.TRUSTED_ENV, raising=False)
    yield tmp_path / "imported.marker"
    sys.modules.pop("usernets_test", None)


def test_a_named_module_is_not_imported_unless_the_user_trusts_it(user_module, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="IMGCLS_TRUSTED_MODULES=usernets_test"):
        create_model("usernets_test:TinyNet", num_classes=3)
    assert not user_module.exists() and "usernets_test" not in sys.modules
    with pytest.raises(ModelNotFoundError):  # a module already imported is no exception: os:system
        create_model("os:system", num_classes=3)
    monkeypatch.setenv(user_models.TRUSTED_ENV, "other, usernets_test")
    assert create_model("usernets_test:TinyNet", num_classes=3)(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    assert user_module.exists()


@pytest.mark.slow
def test_train_with_own_module_then_predict_only_when_trusted(user_module, tmp_path, capsys, monkeypatch):
    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    run = tmp_path / "run"
    argv = ["train", str(data), "--model", "usernets_test:TinyNet", "--img-size", "16", "--epochs", "1"]
    assert main([*argv, "--out", str(run)]) == 0
    write_png(tmp_path / "new.png")
    # A later process: nothing imported, nothing trusted; the checkpoint names the module.
    sys.modules.pop("usernets_test")
    monkeypatch.setattr(user_models, "_trusted", set())
    user_module.unlink()
    capsys.readouterr()
    assert main(["predict", str(run / "best.safetensors"), str(tmp_path / "new.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "IMGCLS_TRUSTED_MODULES=usernets_test" in err
    assert not user_module.exists()
    monkeypatch.setenv(user_models.TRUSTED_ENV, "usernets_test")
    assert main(["predict", str(run / "best.safetensors"), str(tmp_path / "new.png")]) == 0
    assert user_module.exists()


@pytest.mark.slow
def test_models_guide_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "guides" / "models.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- own-model-example -->\n```python\n(.*?)```\n<!-- /own-model-example -->", text, re.S)[1]
    assert len(code.strip().splitlines()) <= 18
    make_class_folders(tmp_path / "photos", per_class=6, junk=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY})  # my-net is forgotten afterwards
    exec(compile(code, "models.md", "exec"), {})
    assert (tmp_path / "runs" / "my-net" / "best.safetensors").is_file()


@pytest.mark.slow
def test_torchvision_model_trains_on_grey_images_then_predicts_and_exports(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    run = tmp_path / "run"
    argv = ["train", str(data), "--model", "torchvision:squeezenet1_1", "--img-size", "32", "--epochs", "1"]
    assert main([*argv, "--set", "data.channels=1", "--out", str(run)]) == 0
    write_png(tmp_path / "new.png")
    capsys.readouterr()
    assert main(["predict", str(run / "best.safetensors"), str(tmp_path / "new.png"), "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert len(json.loads(line)["predictions"]) == 3
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file()
