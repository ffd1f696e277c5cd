"""Zero-shot CLIP and CLIP as a backbone, offline, with a tiny randomly initialised CLIP.

A random CLIP knows nothing, so these tests check the plumbing (local loading, prompting,
output format, metrics, checkpoints), never accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.errors import CheckpointError, ConfigError
from imgcls.inference.predictor import Predictor
from imgcls.zeroshot import DEFAULT_PROMPTS, parse_labels, read_prompts, zeroshot_predictor
from tests.helpers import make_class_folders

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, str]:
    """(config .json, weights .safetensors) of a tiny random CLIP, written like real open_clip weights."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained_text=False)
    weights = folder / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return str(config), str(weights)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_labels_and_prompts_are_parsed_and_checked(tmp_path):
    assert parse_labels(" cat, dog ,eagle,", None) == ("cat", "dog", "eagle")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# animals\nsea_lion\n\nzebra\n", encoding="utf-8")
    assert parse_labels(None, labels_file) == ("sea_lion", "zebra")
    for labels, path in (("cat", None), ("cat,dog,cat", None), ("cat,dog", labels_file), (None, None)):
        with pytest.raises(ConfigError):
            parse_labels(labels, path)
    assert read_prompts(None) == DEFAULT_PROMPTS and all(p.count("{}") == 1 for p in DEFAULT_PROMPTS)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a sketch of a {}.\nitap of a {}.\n")
    assert read_prompts(prompts) == ("a sketch of a {}.", "itap of a {}.")
    prompts.write_text("a sketch of a {}.\nno placeholder here\n")
    with pytest.raises(ConfigError, match="no placeholder here"):
        read_prompts(prompts)


def test_predictor_from_local_weights_scores_every_label(tiny_clip):
    config, weights = tiny_clip
    predictor = zeroshot_predictor(["red", "blue", "sea_lion"], clip_model=config, clip_weights=weights)
    assert predictor.classes == ("red", "blue", "sea_lion")
    assert (predictor.preprocessing.img_size, predictor.preprocessing.channels) == (32, 3)
    probs = predictor.probabilities(_images(5))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # The prompts reach the text tower: another ensemble gives other scores.
    other = zeroshot_predictor(
        ["red", "blue", "sea_lion"], clip_model=config, clip_weights=weights, prompts=("itap of a {}.",)
    )
    assert not np.allclose(other.probabilities(_images(5)), probs)


def test_missing_weights_say_how_to_get_them_when_offline(tiny_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants

    config, _ = tiny_clip
    with pytest.raises(CheckpointError, match="--clip-weights FILE"):
        zeroshot_predictor(["a", "b"], clip_model=config, clip_weights=tmp_path / "nope.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="imgcls weights get clip:ViT-B-32/TAG"):
        zeroshot_predictor(["a", "b"], clip_model="ViT-B-32", clip_weights=None)
    with pytest.raises(CheckpointError, match="imgcls weights get clip:ViT-B-32/openai"):
        zeroshot_predictor(["a", "b"], clip_model="ViT-B-32", clip_weights="ViT-B-32/openai")


def test_weights_are_found_in_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from imgcls.models.clip_backbone import resolve_weights

    snapshot = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path, quick_gelu = resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert path == snapshot / "open_clip_model.safetensors" and quick_gelu is False
    assert resolve_weights("ViT-B-32", "ViT-B-32/laion2b_s34b_b79k")[0] == path  # MODEL/TAG
    with pytest.raises(ConfigError, match="RN50 weights"):
        resolve_weights("ViT-B-32", "RN50/openai")
    assert resolve_weights("ViT-B-32", None)[0] == path  # any cached tag of the architecture
    with pytest.raises(CheckpointError):
        resolve_weights("ViT-B-32", "openai")  # a known tag, but not in this cache


def test_cli_prints_predict_format_and_reports_bad_files(tiny_clip, tmp_path, capsys):
    config, weights = tiny_clip
    good = tmp_path / "photo.png"
    Image.fromarray(_images(1)[0]).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    args = [
        "zeroshot",
        str(good),
        str(bad),
        "--labels",
        "cat,dog,eagle",
        "--clip-model",
        config,
        "--clip-weights",
        weights,
        "--json",
        "--topk",
        "2",
    ]
    assert main(args) == 1  # the unreadable file makes the exit status non-zero, as with predict
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["path"] == str(good) and len(lines[0]["predictions"]) == 2
    scores = [p["score"] for p in lines[0]["predictions"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert {p["label"] for p in lines[0]["predictions"]} <= {"cat", "dog", "eagle"}
    assert lines[1]["path"] == str(bad) and "error" in lines[1]
    assert main(["zeroshot", str(good), "--labels", "cat,dog", "--clip-model", config, "--clip-weights", weights]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ")


@pytest.mark.slow
def test_cli_evaluate_uses_folder_names_and_writes_metrics_and_report(tiny_clip, class_folders, tmp_path, capsys):
    config, weights = tiny_clip
    out = tmp_path / "eval"
    args = [
        "zeroshot",
        "evaluate",
        str(class_folders),
        "--labels-from-folders",
        "--clip-model",
        config,
        "--clip-weights",
        weights,
        "--out",
        str(out),
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["classes"]) == {"猫", "狗 dog", "bird"}
    assert metrics["num_samples"] == 3 * 24
    assert len(metrics["skipped_files"]) == 2  # broken.png and empty.jpg, as `imgcls evaluate` counts them
    assert np.asarray(metrics["confusion_matrix"]).sum() == 72
    assert (out / "report.html").stat().st_size > 1000 and (out / "predictions.npz").is_file()
    assert "zero-shot accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_clip_linear_probe_checkpoint_keeps_the_hash_not_the_backbone(tiny_clip, tmp_path):
    from safetensors.torch import load_file

    from imgcls.models.clip_backbone import sha256_file

    config, weights = tiny_clip
    data = make_class_folders(tmp_path / "data", per_class=8, junk=False)
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "--model",
        f"clip:{config}",
        "--clip-weights",
        weights,
        "--freeze-backbone",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--out",
        str(run),
        "-q",
    ]
    assert main(args) == 0
    best = run / "best.safetensors"
    tensors, meta = ckpt.load_checkpoint(best)
    assert meta["model"]["kwargs"]["clip_sha256"] == sha256_file(Path(weights))
    stored = {k.removeprefix(ckpt.MODEL_PREFIX) for k in tensors}  # either tensor naming
    assert stored == {"head.weight", "head.bias"}  # the backbone is referenced by hash, not copied
    from open_clip.constants import OPENAI_DATASET_MEAN

    assert meta["preprocess"]["mean"] == pytest.approx(OPENAI_DATASET_MEAN)  # CLIP's input statistics
    predictor = Predictor.from_checkpoint(best)
    assert predictor.probabilities(_images(2)).shape == (2, 3)
    clip_tensors = load_file(weights)
    model, _, _ = ckpt.load_model(best)
    torch.testing.assert_close(model.visual.proj, clip_tensors["visual.proj"])  # frozen: as in the CLIP file
    # Another file at the recorded path is refused rather than silently used.
    changed = {k: v + 1 if k == "visual.proj" else v for k, v in clip_tensors.items()}
    from safetensors.torch import save_file

    save_file(changed, weights)
    try:
        with pytest.raises(CheckpointError, match="sha256"):
            ckpt.load_model(best)
    finally:
        save_file(clip_tensors, weights)


@pytest.mark.slow
def test_clip_backbone_copied_on_request_needs_no_weights_file(tiny_clip, tmp_path):
    import shutil

    config, weights = tiny_clip
    own = tmp_path / "clip.safetensors"
    shutil.copy(weights, own)
    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "--model",
        f"clip:{config}",
        "--clip-weights",
        str(own),
        "--freeze-backbone",
        "--set",
        "model.kwargs.clip_copy=true",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--out",
        str(run),
        "-q",
    ]
    assert main(args) == 0
    own.unlink()  # the checkpoint alone must rebuild the model now
    tensors, _ = ckpt.load_checkpoint(run / "best.safetensors")
    (proj,) = [k for k in tensors if k.removeprefix(ckpt.MODEL_PREFIX) == "visual.proj"]  # either tensor naming
    model, _, _ = ckpt.load_model(run / "best.safetensors")
    torch.testing.assert_close(model.visual.proj, tensors[proj])


def test_clip_backbone_needs_a_named_weights_file():
    from imgcls.models import create_model

    with pytest.raises(ConfigError, match="--clip-weights FILE"):
        create_model("clip:ViT-B-32", num_classes=3, img_size=32)  # a cached copy could change under a checkpoint


def test_clip_backbone_is_copied_once_it_differs_from_the_file(tiny_clip):
    from imgcls.models import create_model

    config, weights = tiny_clip
    model = create_model(f"clip:{config}", num_classes=2, in_chans=1, img_size=32, clip_weights=weights)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2)  # grey input through the adapted first convolution
    assert not any(k.startswith("visual.") for k in model.state_dict())
    with torch.no_grad():
        model.visual.proj.add_(0.01)  # as a training step (or an EMA of a trained backbone) would
    assert "visual.proj" in model.state_dict()
