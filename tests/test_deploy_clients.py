"""A client that knows nothing of imgcls: the ONNX file exported --with-preprocessing, fed by
docs/deploy.md's Python client (Pillow: open, EXIF, alpha over white), against `imgcls predict`;
and the graph's resize against imgcls's own, policy by policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from imgcls.cli.main import main
from imgcls.data.decode import DRAFT_MARGIN
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.onnx_preprocess import preprocessing_graph
from imgcls.inference.resize_parity import imgcls_square
from tests.helpers import doc_block, make_class_folders, make_mixed_folder, photo

DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A keras-cnn trained one epoch at 32 px, its --with-preprocessing export, a mixed folder."""
    root = tmp_path_factory.mktemp("deploy")
    data = make_class_folders(root / "data", per_class=16, junk=False)
    args = ["-q", "train", str(data), "--out", str(root / "run"), "--img-size", "32", "--batch-size", "16"]
    assert main([*args, "--epochs", "1"]) == 0
    checkpoint, model = root / "run" / "best.safetensors", root / "model.onnx"
    mixed = make_mixed_folder(root / "mixed")
    assert (
        main(["-q", "export", str(checkpoint), "--with-preprocessing", "--out", str(model), "--check", str(mixed)]) == 0
    )
    return checkpoint, model, mixed


def imgcls_predictions(checkpoint: Path, folder: Path, capsys) -> dict[str, dict[str, float]]:
    capsys.readouterr()
    assert main(["-q", "predict", str(checkpoint), str(folder), "--json", "--topk", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {row["path"]: {p["label"]: p["score"] for p in row["predictions"]} for row in rows}


def drafted(path: str, size: int) -> bool:
    """imgcls decodes this JPEG at reduced scale (Image.draft, never below DRAFT_MARGIN x the
    input size), where a plain client does not."""
    with Image.open(path) as img:
        return img.format == "JPEG" and min(img.size) >= 2 * DRAFT_MARGIN * size


def test_the_documented_python_client_agrees_with_imgcls_predict(exported, capsys, monkeypatch):
    checkpoint, model, mixed = exported
    expected = imgcls_predictions(checkpoint, mixed, capsys)
    monkeypatch.chdir(model.parent)  # the client opens "model.onnx"
    client: dict = {}
    exec(doc_block("python"), client)
    gaps = {"full scale": [], "drafted": []}
    agree = 0
    for path, scores in expected.items():
        label, probabilities = client["classify"](path)
        agree += label == max(scores, key=scores.get)
        gap = max(abs(float(p) - scores[c]) for c, p in zip(client["classes"], probabilities, strict=True))
        gaps["drafted" if drafted(path, 32) else "full scale"].append(gap)
    figures = {kind: (len(values), max(values)) for kind, values in gaps.items()}
    print(f"plain PIL client vs imgcls predict: top-1 {agree}/{len(expected)}; largest gaps {figures}")
    assert len(expected) == 60 and agree / len(expected) >= 0.99
    # Images imgcls decodes at full scale, as the client does: only the resize differs.
    assert figures["full scale"][0] >= 30 and figures["full scale"][1] <= 1e-2
    # JPEGs imgcls decodes at reduced scale (never below twice the input size): as close.
    assert figures["drafted"][0] >= 10 and figures["drafted"][1] <= 1e-2


def test_file_states_what_the_client_must_do(exported):
    _, model, _ = exported
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == json.loads(props["imgcls"])["classes"]
    assert "any height and width" in props["input_layout"] and props["resize"] == "32x32"
    assert "white" in props["alpha"] and "EXIF" in props["exif"]
    assert json.loads(props["multilabel_thresholds"]) is None and json.loads(props["mirror_tta"]) is False
    assert props["imgcls_version"] == proto.producer_version and proto.producer_name == "imgcls"
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    [pixels] = session.get_inputs()
    assert pixels.name == "pixels" and pixels.type == "tensor(uint8)" and pixels.shape[1:3] == ["height", "width"]


def graph_square(pre: Preprocessing, image: np.ndarray, crop_pct: float = 1.0, interpolation: str = "bilinear"):
    graph = preprocessing_graph(pre.img_size, pre.channels, pre.resize, crop_pct, interpolation)
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": image[None]})[0][0].astype(int)


SHAPES = [(480, 640), (37, 1000), (31, 17), (1, 300), (200, 150), (32, 32), (33, 32)]


@pytest.mark.parametrize("policy", ["squash", "pad"])
@pytest.mark.parametrize("channels", [1, 3])
def test_squash_and_pad_are_imgcls_resize_to_one_grey_level(policy, channels):
    pre = Preprocessing(img_size=32, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels, resize=policy)
    rng = np.random.default_rng(0)
    for h, w in SHAPES:
        image = photo(rng, (120, 80, 200), w, h)[:, :, :channels]
        assert np.abs(graph_square(pre, image) - imgcls_square(image, pre)).max() <= 1, (h, w)


@pytest.mark.parametrize(("crop_pct", "interpolation"), [(1.0, "bilinear"), (0.875, "bicubic"), (0.9, "bilinear")])
def test_crop_is_the_centre_square_resized_as_pillow_does(crop_pct, interpolation):
    """The graph crops decode._crop_box's square (side max(1, round(crop_pct x shorter side)))
    and resizes it with Pillow's filter; Pillow's resize of the box itself also reads a few
    pixels outside the box at its edges, which the graph does not (see resize_parity.py)."""
    pre = Preprocessing(img_size=32, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, resize="crop")
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    rng = np.random.default_rng(1)
    for h, w in SHAPES:
        image = photo(rng, (200, 120, 40), w, h)
        side = max(1, round(min(h, w) * crop_pct))
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
        pillow = np.asarray(Image.fromarray(image).crop(box).resize((32, 32), resample)).astype(int)
        assert np.abs(graph_square(pre, image, crop_pct, interpolation) - pillow).max() <= 1, (h, w)


def test_imgcls_runs_the_file_as_it_runs_the_checkpoint(exported, capsys):
    """imgcls decodes and resizes itself, so it runs the graph from after its resize: the ONNX
    file then predicts exactly as the checkpoint, whatever the crop (crop_pct included)."""
    checkpoint, model, mixed = exported
    by_checkpoint = imgcls_predictions(checkpoint, mixed, capsys)
    by_file = imgcls_predictions(model, mixed, capsys)
    assert by_file.keys() == by_checkpoint.keys()
    for path, scores in by_checkpoint.items():
        assert max(abs(by_file[path][c] - s) for c, s in scores.items()) < 1e-4, path


def test_int8_copy_of_a_graph_that_resizes(exported, tmp_path):
    from imgcls.inference.export import export_onnx
    from imgcls.inference.predictor import Predictor, expand_paths

    checkpoint, _, mixed = exported
    result = export_onnx(
        checkpoint, tmp_path / "m.onnx", pixels=True, int8=True, calibration=[str(mixed)], keep_int8=True
    )
    session = ort.InferenceSession(str(result.int8.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:3] == ["height", "width"]  # still takes any size
    assert session.run(["probabilities"], {"pixels": np.zeros((1, 70, 45, 3), np.uint8)})[0].shape == (1, 3)
    predictions = list(Predictor.from_onnx(result.int8.path).predict_paths(expand_paths([str(mixed)])))
    assert len(predictions) == 60 and all(p.error is None for p in predictions)


def test_web_format_refuses_int8_in_one_line(exported, capsys):
    checkpoint, _, _ = exported
    assert main(["export", str(checkpoint), "--format", "web", "--int8"]) == 2
    assert "--int8" in capsys.readouterr().err
