"""The report's predictions-driven parts: curves, calibration, coverage, galleries, Grad-CAM,
saved predictions, class names in any script, and large tasks."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.preprocess import Preprocessing
from imgcls.metrics import classification_metrics
from imgcls.models import create_model
from imgcls.models.registry import list_models
from imgcls.report import Predictions, explain, figures, load_predictions, save_predictions, write_report
from imgcls.report.gallery import highest_loss_mistakes, most_confident_correct

PNG_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
SECTION = re.compile(r'<section id="([a-z-]+)">')


def make_predictions(tmp_path, classes, n=40, seed=0) -> Predictions:
    """Images on disk (a colour per class) with probabilities that are right most of the time."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    labels = np.arange(n) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 2.0
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    paths = []
    for i, label in enumerate(labels):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20, 30, 3), 40 + 200 * label // max(k - 1, 1), np.uint8)).save(path)
        paths.append(str(path))
    return Predictions(labels, probs, tuple(paths))


def report_text(tmp_path, classes, **kwargs) -> str:
    predictions = make_predictions(tmp_path, classes)
    metrics = classification_metrics(predictions.labels, predictions.probs, classes)
    path = write_report(tmp_path / "report.html", metrics=metrics, predictions=predictions, **kwargs)
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_predictions_section_is_there(tmp_path):
    text = report_text(tmp_path, ["汽车", "巴士", "自行车"], summary={"model": "lenet"})
    sections = SECTION.findall(text)
    for key in (
        "summary",
        "confusion",
        "pairs",
        "per-class",
        "roc",
        "pr",
        "calibration",
        "coverage",
        "mistakes",
        "confident",
        "explanations",
    ):
        assert key in sections
    assert "汽车" in text and "巴士" in text  # names as HTML text, whatever the plot font
    assert "Grad-CAM needs the PyTorch checkpoint" in text  # no checkpoint given: said, not crashed
    gallery = text.split('id="mistakes"')[1].split("</section>")[0]
    assert 1 <= len(PNG_URI.findall(gallery)) <= 16
    assert "http://" not in text and "https://" not in text


@pytest.mark.slow
def test_two_classes_show_the_binary_view(tmp_path):
    text = report_text(tmp_path, ["car", "bus"])
    assert "TP " in text and "FN " in text and "TN " in text and "with <b>bus</b> as the positive class" in text
    roc = text.split('id="roc"')[1].split("</section>")[0]
    assert len(PNG_URI.findall(roc)) == 1


@pytest.mark.slow
def test_large_task_stays_readable(tmp_path):
    classes = [f"class {i:03d}" for i in range(120)]
    predictions = make_predictions(tmp_path, classes, n=360)
    metrics = classification_metrics(predictions.labels, predictions.probs, classes)
    text = write_report(tmp_path / "r.html", metrics=metrics, predictions=predictions).read_text(encoding="utf-8")
    assert 'class="scroll"' in text  # the per-class table scrolls
    assert "the 10 classes with the lowest AUC" in text  # curves drawn for the worst classes only
    assert "classes involved in the most mistakes" in text


def test_predictions_round_trip_without_pickle(tmp_path):
    odd = "caf\udce9.png"  # a file name that is not valid UTF-8, as os.listdir gives it
    predictions = Predictions(np.array([0, 1]), np.array([[0.9, 0.1], [0.3, 0.7]], np.float32), ("a.png", odd))
    save_predictions(tmp_path, predictions)
    with np.load(tmp_path / "predictions.npz", allow_pickle=False) as data:
        assert data["paths"].dtype.kind == "S"
    loaded = load_predictions(tmp_path)
    assert loaded.paths == ("a.png", odd)
    np.testing.assert_array_equal(loaded.labels, predictions.labels)
    np.testing.assert_allclose(loaded.probs, predictions.probs)
    assert load_predictions(tmp_path / "nothing-here") is None


def test_gallery_choices():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.99, 0.01], [0.2, 0.8], [0.001, 0.999], [0.002, 0.998], [0.6, 0.4]], np.float32)
    p = Predictions(labels, probs, tuple(f"{i}.png" for i in range(5)))
    assert highest_loss_mistakes(p).tolist() == [1, 4]  # p(true) 0.2 before 0.4
    # The surest of each class first, then the rest: class 0's only correct image is not crowded out.
    assert most_confident_correct(p, 2).tolist() == [2, 0]
    assert most_confident_correct(p).tolist() == [2, 0, 3]


# Every convolutional model imgcls writes or names itself (timm's are built the same way as resnet18).
BIG_CONV = ("vgg11", "resnet18")  # 3-20 s each on 2 cores: make test, not make test-fast
CONV_MODELS = [
    name for name, _ in list_models() if name in ("lenet", "keras-cnn", "small-net", "alexnet", "vgg11", "resnet18")
]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG_CONV else n for n in CONV_MODELS])
def test_grad_cam_runs_on_the_seed_models(name):
    assert len(CONV_MODELS) == 6
    side = 80 if name == "alexnet" else 32  # AlexNet's strides need 65 px or more
    pre = Preprocessing(side, 3, (0.5,) * 3, (0.25,) * 3)
    model = create_model(name, num_classes=4, in_chans=3, img_size=side).eval()
    layer_name, layer = explain.explanation_layer(model, pre)
    assert isinstance(layer, torch.nn.Conv2d)
    from captum.attr import LayerGradCam

    x = torch.randn(2, 3, side, side)
    cam = LayerGradCam(model, layer).attribute(x, target=torch.tensor([0, 1]), relu_attributions=True)
    assert cam.shape[0] == 2 and min(cam.shape[-2:]) >= min(explain.MIN_CAM_SIDE, 1)
    assert torch.isfinite(cam).all()


def test_softmax_regression_has_no_layer_to_explain():
    pre = Preprocessing(16, 1, (0.5,), (0.25,))
    model = create_model("softmax", num_classes=3, in_chans=1, img_size=16)
    assert explain.explanation_layer(model, pre) is None


def test_overlay_marks_the_hot_region():
    image = np.zeros((8, 8, 1), np.uint8)
    heat = np.zeros((8, 8))
    heat[:4] = 1.0
    out = explain.overlay(image, heat)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[:4, :, 0].mean() > out[4:, :, 0].mean()  # jet: hot is red, cold is blue


def test_chinese_class_names_draw_with_a_cjk_font():
    """With a CJK font installed (Debian's fonts-noto-cjk; CI installs it), no glyph is missing."""
    if not figures.has_cjk_font():
        if os.environ.get("IMGCLS_REQUIRE_CJK_FONT") == "1":
            raise AssertionError("IMGCLS_REQUIRE_CJK_FONT=1 but matplotlib finds no CJK font")
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk)")
    fig = figures.confusion_figure([[3, 1], [0, 4]], ["汽车", "巴士"], normalise=False)
    import io

    with warnings.catch_warnings(record=True) as caught, figures.drawing():
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png")
    assert not [w for w in caught if "missing from" in str(w.message)]
