"""The model registry, looped over: every registered model honours timm's interface."""

from __future__ import annotations

import pytest
import torch

from imgcls.errors import ConfigError, ImgclsError, ModelNotFoundError
from imgcls.models import registry
from imgcls.models.registry import _REGISTRY, count_parameters, create_model, is_classic, list_models, resolve

NETWORKS = {name: entry for name, entry in _REGISTRY.items() if not is_classic(name)}

NUM_CLASSES = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of two are too small to gain from a second thread, and when another process
    busies the other core, two threads spend seconds waiting for each other on every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def embedding_width(model: torch.nn.Module) -> int:
    """Width of forward_head(..., pre_logits=True). timm >= 1.0 calls it head_hidden_size
    when it differs from num_features (VGG: 512 features, 4096 pre-logits)."""
    return getattr(model, "head_hidden_size", model.num_features)


# The big networks take 10-20 s each on 2 cores: make test checks them, make test-fast does not.
BIG = {"alexnet", "vgg11", "vgg16"}


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NETWORKS])
def test_registered_model_interface(name, in_chans):
    size = max(_REGISTRY[name].min_size, 32)
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_chans=in_chans, img_size=size).eval()
    x = torch.randn(2, in_chans, size, size)
    # The backward pass is checked once per model (on the grey variant): for VGG it costs
    # seconds, and the 3-channel model differs only in its first convolution.
    with_grad = in_chans == 1

    with torch.set_grad_enabled(with_grad):
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert logits.shape == (2, NUM_CLASSES)
    assert pre_logits.shape == (2, embedding_width(model))
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5)  # forward == head(features)

    if with_grad:
        logits.sum().backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n, p in params if p.grad is None]
        assert not missing, f"no gradient for {missing[:5]}"
        assert torch.isfinite(torch.stack([p.grad.sum() for _, p in params])).all()  # NaN and inf propagate
        assert model.get_classifier().weight.grad.abs().sum() > 0
        assert params[0][1].grad.abs().sum() > 0  # gradients reach the first layer

    model.reset_classifier(NUM_CLASSES + 2)
    with torch.no_grad():
        assert model.forward_head(features.detach()).shape == (2, NUM_CLASSES + 2)
        assert model(x).shape == (2, NUM_CLASSES + 2)


@pytest.mark.parametrize("name", [n for n, e in NETWORKS.items() if e.min_size < 32])
def test_model_accepts_its_min_size(name):
    """Models whose min_size is below the 32 px of the test above, at exactly min_size."""
    size = _REGISTRY[name].min_size
    model = create_model(name, num_classes=3, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 3)


@pytest.mark.parametrize("name", [n for n, e in NETWORKS.items() if e.min_size > 8])
def test_img_size_below_min_size_is_a_config_error(name):
    with pytest.raises(ConfigError, match=name):
        create_model(name, num_classes=3, in_chans=1, img_size=_REGISTRY[name].min_size - 1)


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(_REGISTRY))
    original = registry._REGISTRY["softmax"]
    with pytest.raises(ValueError, match="softmax"):
        registry.register("softmax", lambda **kw: torch.nn.Identity(), "impostor")
    assert registry._REGISTRY["softmax"] is original

    registry.register("tiny-new", original.build, "a fresh name is accepted")
    assert resolve("tiny-new").description == "a fresh name is accepted"
    with pytest.raises(ValueError, match="tiny-new"):
        registry.register("tiny-new", original.build, "twice")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelNotFoundError, match="resnet18") as info:
        create_model("resnet19", num_classes=3)
    assert isinstance(info.value, ImgclsError)
    with pytest.raises(ModelNotFoundError, match="keras-cnn"):
        create_model("keras_cnn", num_classes=3)
    with pytest.raises(ModelNotFoundError):
        resolve("definitely-not-a-model-xyz")


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "timm:mobilenetv3_small_050"])
def test_timm_model_by_name(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_chans=1, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 4)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, embedding_width(model))


def test_list_models():
    names = [name for name, _ in list_models("resnet1*")]
    assert "resnet18" in names
    assert names.count("resnet18") == 1  # imgcls's entry, not repeated from timm
    assert all(name.startswith("resnet1") for name in names)
    assert "resnet101" in names  # timm's models are listed too
    own = dict(list_models(include_timm=False))
    assert set(own) == set(_REGISTRY) | set(registry.torchvision_names())  # torchvision's few, always listed
    assert [n for n, _ in list_models("cnn", include_timm=False)] == ["keras-cnn"]  # substring match


def test_count_parameters():
    assert count_parameters("softmax", num_classes=10, in_chans=1, img_size=28) == 28 * 28 * 10 + 10 == 7850
    model = create_model("keras-cnn", num_classes=7, in_chans=3, img_size=32)
    assert count_parameters("keras-cnn", num_classes=7, in_chans=3, img_size=32) == sum(
        p.numel() for p in model.parameters()
    )
    assert count_parameters("no-such-model-xyz") is None


def test_bad_model_arguments_are_a_config_error():
    with pytest.raises(ConfigError, match="keras-cnn"):
        create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28, no_such_argument=1)


def test_only_a_refused_argument_reads_as_one(monkeypatch):
    with pytest.raises(ConfigError, match="does not accept these arguments.*'no_such_option'"):
        create_model("keras-cnn", num_classes=3, img_size=32, no_such_option=1)

    def faulty(**_):
        return len(None)  # a bug inside a builder: a TypeError that is not about the arguments

    monkeypatch.setitem(_REGISTRY, "faulty", registry.ModelEntry("faulty", faulty, "a broken builder"))
    with pytest.raises(TypeError, match="NoneType"):
        create_model("faulty", num_classes=3, img_size=32, width=4)
