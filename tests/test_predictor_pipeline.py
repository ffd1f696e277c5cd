"""Predictor speed-ups that must not change results: the cached ONNX graph of a checkpoint
(reused, invalidated when the checkpoint changes, rebuilt when damaged) and decoding the next
chunk of files while the model runs on the current one."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls.inference.predictor as predictor_module
from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.inference.predictor import Predictor, onnx_cache_path
from imgcls.models import create_model

pytest.importorskip("onnxruntime")  # the [onnx] extra; test_extras covers its absence

CLASSES = ["cat", "dog", "owl"]
PRE = Preprocessing(32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _checkpoint(path: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model = create_model("keras-cnn", num_classes=len(CLASSES), in_chans=3, img_size=32)
    meta = {"model": {"name": "keras-cnn", "kwargs": {}}, "classes": CLASSES, "preprocess": PRE.to_dict()}
    ckpt.save_checkpoint(path, ckpt.model_tensors(model), meta)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _images(count: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_the_converted_graph_is_kept_and_reused_without_building_the_network(tmp_path, cache, monkeypatch):
    checkpoint = _checkpoint(tmp_path / "model.safetensors", seed=0)
    first = Predictor.from_checkpoint(checkpoint, runtime="onnx")
    assert first.runtime == "onnxruntime"
    assert [p.name for p in cache.iterdir()] == [onnx_cache_path(checkpoint).name]

    def no_network(path):
        raise AssertionError("the network was built although its graph is cached")

    monkeypatch.setattr(ckpt, "load_model", no_network)
    again = Predictor.from_checkpoint(checkpoint, runtime="onnx")
    assert again.runtime == "onnxruntime" and again.classes == tuple(CLASSES)
    assert again.preprocessing == PRE
    np.testing.assert_array_equal(again.probabilities(_images()), first.probabilities(_images()))


def test_a_changed_checkpoint_is_converted_again(tmp_path, cache):
    checkpoint = tmp_path / "model.safetensors"
    old = Predictor.from_checkpoint(_checkpoint(checkpoint, seed=0), runtime="onnx").probabilities(_images())
    old_entry = onnx_cache_path(checkpoint)
    _checkpoint(checkpoint, seed=1)  # other weights, same file name
    assert onnx_cache_path(checkpoint) != old_entry
    new = Predictor.from_checkpoint(checkpoint, runtime="onnx").probabilities(_images())
    torch_probs = Predictor.from_checkpoint(checkpoint, runtime="torch").probabilities(_images())
    assert np.abs(new - old).max() > 1e-3  # the new weights answer, not the old graph
    np.testing.assert_allclose(new, torch_probs, atol=1e-4)
    assert len(list(cache.glob("*.onnx"))) == 2


def test_a_damaged_cached_graph_is_replaced(tmp_path, cache):
    checkpoint = _checkpoint(tmp_path / "model.safetensors", seed=0)
    good = Predictor.from_checkpoint(checkpoint, runtime="onnx").probabilities(_images())
    onnx_cache_path(checkpoint).write_bytes(b"not an onnx graph")
    again = Predictor.from_checkpoint(checkpoint, runtime="onnx")
    assert again.runtime == "onnxruntime"
    np.testing.assert_allclose(again.probabilities(_images()), good, atol=1e-6)
    assert onnx_cache_path(checkpoint).read_bytes()[:20] != b"not an onnx graph"[:20]


def test_only_the_most_recent_graphs_are_kept(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(predictor_module, "ONNX_CACHE_KEEP", 2)
    paths = [_checkpoint(tmp_path / f"m{i}.safetensors", seed=i) for i in range(3)]
    for path in paths:
        Predictor.from_checkpoint(path, runtime="onnx")
    assert sorted(cache.glob("*.onnx")) == sorted(onnx_cache_path(p) for p in paths[1:])


def test_torch_runtime_leaves_the_cache_alone(tmp_path, cache):
    Predictor.from_checkpoint(_checkpoint(tmp_path / "model.safetensors", seed=0), runtime="torch")
    assert not cache.exists()


def _folder(tmp_path: Path, count: int) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(1)
    items = []
    for i in range(count):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        items.append((path.name, path))
    (tmp_path / "broken.png").write_bytes(b"no image")
    items.insert(3, ("broken.png", tmp_path / "broken.png"))
    return items


def _mean_colour_model(images: np.ndarray) -> np.ndarray:
    """A stand-in model: 'probabilities' from each image's mean channel values."""
    means = images.reshape(len(images), -1, 3).mean(1)
    return means / means.sum(1, keepdims=True)


def test_predictions_in_order_with_errors_in_place(tmp_path):
    items = _folder(tmp_path, 7)
    predictor = Predictor(_mean_colour_model, ("r", "g", "b"), PRE, {})
    predictions = list(predictor.predict_paths(items, topk=3, batch_size=2))
    assert [p.path for p in predictions] == [shown for shown, _ in items]
    assert predictions[3].error and "not an image" in predictions[3].error
    for (_, path), prediction in zip(items, predictions, strict=True):
        if prediction.error is None:
            expected = _mean_colour_model(predictor.decode(path)[None])[0]
            assert dict(prediction.labels) == pytest.approx(dict(zip("rgb", expected.tolist(), strict=True)))


def test_the_next_chunk_decodes_while_the_model_runs(tmp_path):
    items = _folder(tmp_path, 5)
    second_chunk = {path for _, path in items[2:4]}
    decoding_ahead = threading.Event()
    calls = []

    class Watching(Predictor):
        def decode(self, source, name=None, max_pixels=None):
            if source in second_chunk:
                decoding_ahead.set()
            return super().decode(source, name=name, max_pixels=max_pixels)

    def model(images: np.ndarray) -> np.ndarray:
        if not calls:  # the first chunk's batch: its run waits until the second chunk is being decoded
            calls.append(decoding_ahead.wait(timeout=30))
        return _mean_colour_model(images)

    predictions = list(Watching(model, ("r", "g", "b"), PRE, {}).predict_paths(items, batch_size=2))
    assert calls == [True]  # without the overlap the wait would have timed out
    assert len(predictions) == len(items)


def test_cpu_forwards_hold_a_bounded_number_of_pixels_and_give_the_same_logits():
    """On a CPU, batched_logits runs photo-size images a few at a time (activations that fit
    the caches ran 1.5-2.4x faster than 256 images a batch) and small images in one batch; the
    logits equal one forward per image."""
    import torch
    from torch import nn

    from imgcls.inference.batched import CPU_BATCH_PIXELS, batched_logits, rows_per_batch

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.batches: list[int] = []

        def forward(self, x):
            self.batches.append(len(x))
            return self.conv(x).mean((2, 3))

    torch.manual_seed(0)
    model = Counting().eval()
    photos = torch.randint(0, 256, (40, 224, 224, 3), dtype=torch.uint8)
    pre = Preprocessing(224, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    logits = batched_logits(model, photos, pre, batch_size=256)
    assert max(model.batches) * 224 * 224 <= CPU_BATCH_PIXELS and sum(model.batches) == 40
    one_by_one = torch.cat([batched_logits(model, photos[i : i + 1], pre, batch_size=1) for i in range(40)])
    torch.testing.assert_close(logits, one_by_one, atol=1e-5, rtol=1e-5)
    model.batches.clear()
    batched_logits(model, torch.zeros(300, 28, 28, 3, dtype=torch.uint8), PRE, batch_size=256)
    assert model.batches == [256, 44]  # 28-px images keep the asked batch
    assert rows_per_batch(256, 224 * 224, torch.device("cuda")) == 256  # a GPU wants the large batch


def _timings(monkeypatch, seconds: dict[str, float], calls: list[str]) -> None:
    """The runtime race's stopwatch, replaced: each runtime takes the seconds given (the real
    race is measured in benchmarks/photo_speed.py); every call is recorded."""

    def race(predictor, images):
        calls.append(predictor.runtime)
        assert len(images) == predictor_module.RACE_IMAGES and predictor.probabilities(images).shape == (16, 3)
        return seconds[predictor.runtime]

    monkeypatch.setattr(predictor_module, "race_seconds", race)


def test_auto_on_a_bfloat16_cpu_keeps_the_faster_runtime_and_times_once_per_checkpoint(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(predictor_module, "cpu_has_bf16", lambda: True)
    calls: list[str] = []
    dense = _checkpoint(tmp_path / "dense.safetensors", seed=0)
    _timings(monkeypatch, {"onnxruntime": 0.32, "torch-bf16": 0.20}, calls)
    chosen = Predictor.from_checkpoint(dense, runtime="fastest")
    assert chosen.runtime == "torch-bf16" and sorted(calls) == ["onnxruntime", "torch-bf16"]
    float32 = Predictor.from_checkpoint(dense, runtime="onnx").probabilities(_images())
    bf16 = chosen.probabilities(_images())
    np.testing.assert_allclose(bf16, float32, atol=3e-2)  # bfloat16's 8 bits of mantissa
    assert (bf16.argmax(1) == float32.argmax(1)).all()

    calls.clear()
    assert Predictor.from_checkpoint(dense, runtime="fastest").runtime == "torch-bf16" and calls == []  # kept

    close = _checkpoint(tmp_path / "close.safetensors", seed=1)  # bfloat16 ahead, but not by the margin
    _timings(monkeypatch, {"onnxruntime": 0.22, "torch-bf16": 0.20}, calls)
    assert Predictor.from_checkpoint(close, runtime="fastest").runtime == "onnxruntime"
    calls.clear()
    assert Predictor.from_checkpoint(close, runtime="fastest").runtime == "onnxruntime" and calls == []


def test_auto_without_bfloat16_runs_onnx_runtime_untimed(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(predictor_module, "cpu_has_bf16", lambda: False)
    calls: list[str] = []
    _timings(monkeypatch, {"onnxruntime": 1.0, "torch-bf16": 0.1}, calls)
    chosen = Predictor.from_checkpoint(_checkpoint(tmp_path / "m.safetensors", seed=0), runtime="fastest")
    assert chosen.runtime == "onnxruntime" and calls == [] and not list(cache.glob("*.json"))


def test_onnx_runtime_runs_photo_sizes_within_the_cpu_pixel_budget(tmp_path, cache, monkeypatch):
    """Like PyTorch's forwards on a CPU, ONNX Runtime's calls hold at most CPU_BATCH_PIXELS
    pixels (mobilenetv3_large_100 at 224 px: 233 images a second at 32 a call, 169 at 256)."""
    from imgcls.inference import onnx_runtime
    from imgcls.inference.batched import CPU_BATCH_PIXELS

    pre = Preprocessing(224, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    seen: list[int] = []

    class Session:
        def get_inputs(self):
            return [type("Input", (), {"name": onnx_runtime.FLOAT_INPUT})()]

        def run(self, outputs, feed):
            [x] = feed.values()
            seen.append(len(x))
            return [np.full((len(x), 3), x.mean(axis=(1, 2, 3))[:, None], dtype=np.float32)]

    photos = np.random.default_rng(0).integers(0, 256, (40, 224, 224, 3), dtype=np.uint8)
    probs = onnx_runtime.probability_function(Session(), pre)(photos)
    assert max(seen) * 224 * 224 <= CPU_BATCH_PIXELS and sum(seen) == 40 and probs.shape == (40, 3)
    expected = onnx_runtime.normalise(photos, pre).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(probs[:, 0], expected, rtol=1e-6)  # every image, in order
    seen.clear()
    onnx_runtime.probability_function(Session(), PRE)(_images(300))
    assert seen == [300]  # 32-px images in one call
