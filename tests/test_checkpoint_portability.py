"""best.safetensors under the model's own tensor names: timm and plain PyTorch load it as it
is, and imgcls still reads checkpoints that keep the weights under `model.`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.predictor import Predictor
from imgcls.models import create_model

CLASSES = ["ant", "bee", "cicada"]
DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"


def save_best(path: Path, name: str, model: nn.Module, pre: Preprocessing, *, prefixed: bool = False) -> Path:
    """A checkpoint as training writes best.safetensors (`prefixed`: as imgcls did before)."""
    tensors = ckpt.model_tensors(model)
    if prefixed:
        tensors = {ckpt.MODEL_PREFIX + k: v for k, v in tensors.items()}
    meta = {
        "task": "single-label",
        "model": {"name": name, "kwargs": {}},
        "classes": CLASSES,
        "preprocess": pre.to_dict(),
    }
    ckpt.save_checkpoint(path, tensors, meta)
    return path


def images(pre: Preprocessing, count: int = 4) -> np.ndarray:
    shape = (count, pre.img_size, pre.img_size, pre.channels)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def normalised(pixels: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(pre.mean).view(1, -1, 1, 1)) / torch.tensor(pre.std).view(1, -1, 1, 1)


def test_best_checkpoint_holds_the_models_own_names(tmp_path):
    torch.manual_seed(0)
    model = create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28)
    pre = Preprocessing(img_size=28, channels=1, mean=(0.5,), std=(0.25,))
    path = save_best(tmp_path / "best.safetensors", "keras-cnn", model, pre)
    assert set(load_file(path)) == set(model.state_dict())  # no prefix, nothing else
    bare = create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28)
    bare.load_state_dict(load_file(path))  # strict: a plain PyTorch module takes the file
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(bare.eval()(x), model.eval()(x))


@pytest.mark.parametrize("prefixed", [False, True], ids=["own-names", "prefixed"])
def test_imgcls_loads_both_forms(tmp_path, prefixed):
    torch.manual_seed(0)
    model = create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28).eval()
    pre = Preprocessing(img_size=28, channels=1, mean=(0.5,), std=(0.25,))
    path = save_best(tmp_path / "best.safetensors", "keras-cnn", model, pre, prefixed=prefixed)
    loaded, _, _ = ckpt.load_model(path)
    pixels = images(pre)
    with torch.no_grad():
        expected = model(normalised(pixels, pre)).softmax(1).numpy()
        assert torch.equal(loaded(normalised(pixels, pre)), model(normalised(pixels, pre)))
    probs = Predictor.from_checkpoint(path, runtime="torch").probabilities(pixels)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


class Wrapped(nn.Module):
    """A model whose own tensor names start with `model.`, as the old prefix did."""

    def __init__(self):
        super().__init__()
        self.model = nn.Linear(4, 3)


@pytest.mark.parametrize("prefixed", [False, True], ids=["own-names", "prefixed"])
def test_read_model_tensors_tells_the_forms_apart_by_the_models_names(prefixed):
    state = Wrapped().state_dict()
    assert set(state) == {"model.weight", "model.bias"}
    stored = {ckpt.MODEL_PREFIX + k: v for k, v in state.items()} if prefixed else dict(state)
    assert ckpt.read_model_tensors(stored, state) == dict(state)


def test_resume_file_form_gives_only_the_model(tmp_path):
    state = nn.Linear(4, 3).state_dict()
    last = {ckpt.MODEL_PREFIX + k: v for k, v in state.items()}
    last |= {"ema." + k: v for k, v in state.items()} | {"optim.0.exp_avg": torch.zeros(3)}
    assert set(ckpt.read_model_tensors(last, state)) == {"weight", "bias"}


def test_shape_check_still_refuses_mismatched_metadata(tmp_path):
    """Metadata asking for another model than the weights: refused before building it, in the new form too."""
    torch.manual_seed(0)
    model = create_model("keras-cnn", num_classes=3, in_chans=1, img_size=28)
    pre = Preprocessing(img_size=28, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)  # 3 channels, weights for 1
    path = save_best(tmp_path / "best.safetensors", "keras-cnn", model, pre)
    with pytest.raises(ckpt.CheckpointError, match="do not match"):
        ckpt.load_model(path)


def timm_loader_from_the_docs() -> str:
    section = DEPLOY.read_text(encoding="utf-8").split("## The checkpoint in timm or plain PyTorch", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_timm_loads_the_checkpoint_as_the_docs_say(tmp_path):
    """The issue's case: tf_efficientnet_lite0 (122 weight tensors), loaded by timm as its
    pretrained weights, predicts exactly as imgcls does."""
    torch.manual_seed(0)
    name = "tf_efficientnet_lite0"
    model = create_model(name, num_classes=len(CLASSES), in_chans=3, img_size=64).eval()
    pre = Preprocessing(img_size=64, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    path = save_best(tmp_path / "best.safetensors", name, model, pre)
    code = timm_loader_from_the_docs().replace('CK = "best.safetensors"', f"CK = {str(path)!r}")
    assert code != timm_loader_from_the_docs()
    scope: dict = {}
    exec(compile(code, "deploy.md", "exec"), scope)  # the snippet as published
    bare = scope["model"]
    assert type(bare).__module__.startswith("timm.")
    pixels = images(pre)
    with torch.no_grad():
        timm_probs = bare(normalised(pixels, pre)).softmax(1).numpy()
    imgcls_probs = Predictor.from_checkpoint(path, runtime="torch").probabilities(pixels)
    np.testing.assert_allclose(timm_probs, imgcls_probs, atol=1e-5)
    # Not an accident of a random head agreeing: a model built without the file disagrees.
    torch.manual_seed(1)
    other = create_model(name, num_classes=len(CLASSES), in_chans=3, img_size=64).eval()
    with torch.no_grad():
        assert np.abs(other(normalised(pixels, pre)).softmax(1).numpy() - imgcls_probs).max() > 1e-3
