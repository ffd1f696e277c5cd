"""ONNX export: parity with PyTorch, stand-alone metadata, uint8 input, int8, and ONNX prediction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imgcls.checkpoint import load_model
from imgcls.cli.main import main
from imgcls.errors import ConfigError, ExportError
from imgcls.inference.export import export_onnx
from imgcls.inference.onnx_graph import max_difference, to_onnx_bytes
from imgcls.inference.onnx_runtime import probability_function, session
from imgcls.inference.predictor import Predictor, expand_paths
from tests.helpers import make_class_folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A keras-cnn trained one epoch on three colour classes (RGB, 32 px)."""
    data = make_class_folders(tmp_path_factory.mktemp("export") / "data", per_class=16)
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "32", "--batch-size", "16", "--epochs", "1"]
    assert main(args) == 0
    return data, run / "best.safetensors"


def test_export_matches_pytorch_and_stands_alone(trained, tmp_path, capsys):
    data, checkpoint = trained
    out = tmp_path / "model.onnx"
    capsys.readouterr()
    assert main(["-q", "export", str(checkpoint), "--out", str(out), "--check", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "largest probability difference" in printed and str(data) in printed

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["imgcls"])
    assert json.loads(props["classes"]) == meta["classes"] == ["bird", "狗 dog", "猫"]
    assert meta["preprocess"]["img_size"] == 32

    # Dynamic batch: 1 and 5 images through the same file, against PyTorch's float32 probabilities.
    model, pre, _ = load_model(checkpoint)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32)
        logits, probs = session.run(None, {"input": x.numpy()})
        assert probs.shape == (n, 3) and logits.shape == (n, 3)
        with torch.inference_mode():
            expected = model(x).softmax(1).numpy()
        assert np.abs(probs - expected).max() < 1e-4
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_pixels_input_does_the_normalisation_inside(trained, tmp_path):
    data, checkpoint = trained
    out = tmp_path / "pixels.onnx"
    result = export_onnx(checkpoint, out, pixels=True, check=[str(data)])
    assert result.max_difference < 1e-4 and result.check_images == 48
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "pixels" and inp.type == "tensor(uint8)"
    # Raw pixels in, the same probabilities as the checkpoint's own predictor out.
    predictor = Predictor.from_checkpoint(checkpoint)
    images = np.stack(
        [
            predictor.decode(path)
            for _, path in expand_paths([str(data)])
            if "broken" not in path.name and path.stat().st_size
        ]
    )
    probs = session.run(["probabilities"], {"pixels": images})[0]
    assert np.abs(probs - predictor.probabilities(images)).max() < 1e-4


def test_onnx_predictor_equals_checkpoint_predictor_on_a_folder(trained, tmp_path, capsys):
    data, checkpoint = trained
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    lines = {}
    for model in (checkpoint, out):
        capsys.readouterr()
        assert main(["-q", "predict", str(model), str(data), "--json", "--topk", "3"]) == 1  # two broken files
        lines[model] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_checkpoint, by_onnx = lines[checkpoint], lines[out]
    assert [r["path"] for r in by_checkpoint] == [r["path"] for r in by_onnx]
    assert sum("error" in r for r in by_onnx) == 2
    for a, b in zip(by_checkpoint, by_onnx, strict=True):
        if "error" in a:
            assert a["error"] == b["error"]
            continue
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert max(abs(p["score"] - q["score"]) for p, q in zip(a["predictions"], b["predictions"], strict=True)) < 1e-4


def test_predict_runtime_onnx_matches_torch(trained, capsys):
    data, checkpoint = trained
    outputs = {}
    for runtime in ("torch", "onnx"):
        capsys.readouterr()
        assert main(["-q", "predict", str(checkpoint), str(data), "--json", "--runtime", runtime]) == 1
        outputs[runtime] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(outputs["torch"], outputs["onnx"], strict=True):
        assert a.keys() == b.keys() and a["path"] == b["path"]
        if "predictions" in a:
            assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
            assert abs(a["predictions"][0]["score"] - b["predictions"][0]["score"]) < 1e-4
    assert Predictor.from_checkpoint(checkpoint, runtime="onnx").runtime == "onnxruntime"


def test_evaluate_reads_an_onnx_file(trained, tmp_path, capsys):
    data, checkpoint = trained
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    results = []
    for model in (checkpoint, out):
        capsys.readouterr()
        assert main(["-q", "evaluate", str(model), str(data), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[0]["num_samples"] == results[1]["num_samples"] == 48


def test_int8_is_measured_and_kept_only_when_it_pays(trained, tmp_path):
    data, checkpoint = trained
    out = tmp_path / "model.onnx"
    result = export_onnx(checkpoint, out, int8=True, calibration=[str(data)])
    q = result.int8
    assert q is not None and 0.0 <= q.agreement <= 1.0 and q.speedup > 0
    int8_file = tmp_path / "model.int8.onnx"
    kept = q.speedup >= 1.05 and q.agreement >= 0.99
    assert int8_file.exists() == kept
    assert (q.path is not None) == kept
    forced = export_onnx(checkpoint, tmp_path / "forced.onnx", int8=True, calibration=[str(data)], keep_int8=True)
    path = forced.int8.path
    assert path == tmp_path / "forced.int8.onnx" and path.is_file()
    kinds = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    assert Predictor.from_onnx(path).predict_paths(expand_paths([str(data)]), topk=1)


def test_int8_needs_calibration_images(trained, tmp_path):
    _, checkpoint = trained
    with pytest.raises(ConfigError, match="--calibration"):
        export_onnx(checkpoint, tmp_path / "m.onnx", int8=True)


def test_a_disagreeing_export_fails_and_writes_nothing(trained, tmp_path, monkeypatch):
    _, checkpoint = trained
    import imgcls.inference.export as export

    monkeypatch.setattr(export, "max_difference", lambda *a, **k: 3e-3)  # as if an operator were exported wrongly
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(checkpoint, out)
    assert not out.exists()


def test_parity_detects_a_real_difference(trained):
    _, checkpoint = trained
    model, pre, meta = load_model(checkpoint)
    data = to_onnx_bytes(model, pre, meta, pixels=False)
    with torch.no_grad():
        model.fc.bias += 1.0 * torch.arange(3)  # PyTorch now differs from the exported graph
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    assert max_difference(model, pre, probability_function(session(data), pre), images) > 1e-2


def test_an_onnx_file_without_imgcls_metadata_is_refused(tmp_path):
    from imgcls.errors import CheckpointError

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(plain), dynamo=False)
    with pytest.raises(CheckpointError, match="without imgcls metadata"):
        Predictor.from_onnx(plain)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load"):
        Predictor.from_onnx(broken)


def test_predict_writes_csv_and_sorts_into_class_folders(trained, tmp_path, capsys):
    data, checkpoint = trained
    table, sorted_dir = tmp_path / "predictions.csv", tmp_path / "sorted"
    args = ["-q", "predict", str(checkpoint), str(data), "--topk", "2", "--out", str(table)]
    args += ["--copy-to", str(sorted_dir)]
    assert main(args) == 1  # the two broken files
    rows = list(csv.DictReader(open(table, encoding="utf-8")))
    assert list(rows[0]) == ["path", "label_1", "score_1", "label_2", "score_2", "error"]
    assert len(rows) == 50 and sum(bool(r["error"]) for r in rows) == 2
    good = [r for r in rows if not r["error"]]
    assert all(float(r["score_1"]) >= float(r["score_2"]) for r in good)
    files = [p for p in sorted_dir.rglob("*") if p.is_file()]
    assert len(files) == 48  # every readable image, none lost to name collisions
    for label in {r["label_1"] for r in good}:  # each image went to the folder of its top label
        assert len(list((sorted_dir / label).iterdir())) == sum(r["label_1"] == label for r in good)


@pytest.mark.slow
def test_predicting_from_onnx_never_imports_training_code(trained, tmp_path):
    import subprocess
    import sys

    data, checkpoint = trained
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    code = (
        "import sys; from imgcls.cli.main import main; "
        f"status = main(['-q', 'predict', {str(out)!r}, {str(data / 'bird')!r}]); "
        "loaded = [m for m in sys.modules if m.startswith('imgcls.training') or m == 'imgcls.data.loader']; "
        "print('LOADED', loaded, status)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED [] 0" in result.stdout
    assert result.stdout.count(": bird") == 16  # and it predicted the folder right


@pytest.mark.slow
def test_test_time_flip_travels_with_the_model(tmp_path):
    """augment.test_flip: logits are the mean over the image and its mirror, in PyTorch and
    in the exported graph alike, and the checkpoint says so."""
    data = make_class_folders(tmp_path / "data", per_class=8, junk=False)
    run = tmp_path / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--batch-size", "8", "--epochs", "1"]
    assert main([*args, "--set", "augment.test_flip=true"]) == 0
    model, pre, meta = load_model(run / "best.safetensors")
    assert pre.test_flip and meta["preprocess"]["test_flip"] is True
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), np.uint8)
    from imgcls.data.preprocess import to_model_input
    from imgcls.inference.batched import batched_logits

    x = to_model_input(torch.from_numpy(images), pre, channels_last=False)
    with torch.inference_mode():
        plain, mirrored = model(x), model(x.flip(3))
    got = batched_logits(model, torch.from_numpy(images), pre)
    assert torch.allclose(got, (plain + mirrored) / 2, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the mirror changed something
    result = export_onnx(run / "best.safetensors", tmp_path / "flip.onnx", pixels=True)
    assert result.max_difference < 1e-4
    onnx_probs = Predictor.from_onnx(tmp_path / "flip.onnx").probabilities(images)
    assert np.abs(onnx_probs - got.softmax(1).numpy()).max() < 1e-4
