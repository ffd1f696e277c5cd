"""Metric learning as a training mode: `imgcls train --task embedding` / `--loss arcface|...`.

An embedding model is a backbone, a linear + batch-norm neck and a cosine classifier; the
margin goes on the true class's cosine in the loss only. Its checkpoint predicts like any
classifier, and `imgcls embed` (gallery, recognize, search, cluster) reads the neck's output."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.config import build_config
from imgcls.data.preprocess import to_model_input
from imgcls.errors import ConfigError
from imgcls.models import create_model
from imgcls.models.embedding import EmbeddingNet, model_arguments
from imgcls.retrieval.embed import Embedder
from imgcls.training.losses import ClassificationLoss, build_loss

DIM = 16


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory) -> dict[str, Path]:
    """keras-cnn at 32 px trained 2 epochs with ArcFace on three colour classes."""
    from tests.helpers import make_class_folders

    root = tmp_path_factory.mktemp("metric")
    data = make_class_folders(root / "data", per_class=12, junk=False)
    run = root / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "32", "--batch-size", "8", "--epochs", "2"]
    assert main([*args, "--task", "embedding", "--set", f"model.embedding_dim={DIM}"]) == 0
    return {"data": data, "checkpoint": run / "best.safetensors"}


def test_checkpoint_records_and_rebuilds_the_embedding_model(embedding_run):
    meta = ckpt.read_metadata(embedding_run["checkpoint"])
    assert meta["model"]["kwargs"]["embedding"] == {"dim": DIM, "subcenters": 1, "scale": 30.0}
    model, _, _ = ckpt.load_model(embedding_run["checkpoint"])
    assert isinstance(model, EmbeddingNet) and model.num_features == DIM
    assert not any(k.startswith("backbone.fc") for k in model.state_dict())  # no unused classifier weights


def test_predicting_needs_no_metric_learning_library(embedding_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)  # as if not installed
    bird = sorted((embedding_run["data"] / "bird").iterdir())[0]
    assert main(["predict", str(embedding_run["checkpoint"]), str(bird), "--json"]) == 0
    scores = [p["score"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert len(scores) == 3 and sum(scores) == pytest.approx(1.0, abs=1e-4)


def test_training_without_the_metric_extra_names_it(monkeypatch, capsys, class_folders, tmp_path):
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning.losses", None)
    args = ["train", str(class_folders), "--loss", "cosface", "--img-size", "16", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "pip install 'imgcls[metric]'" in capsys.readouterr().err


def test_embed_uses_the_trained_normalised_embedding(embedding_run, tmp_path):
    out = tmp_path / "emb.npy"
    assert main(["-q", "embed", str(embedding_run["checkpoint"]), str(embedding_run["data"]), "--out", str(out)]) == 0
    vectors = np.load(out, allow_pickle=False)
    assert vectors.shape == (36, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The neck's output (linear, batch norm) normalised, not the backbone's pooled features,
    # and not whitened: the neck is the embedding trained for cosine comparison.
    embedder = Embedder.from_checkpoint(embedding_run["checkpoint"])
    assert embedder.whitening is None and "whitening" not in embedder.metadata
    pixels = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    network = embedder.network
    with torch.inference_mode():
        pooled = network.backbone.forward_head(
            network.forward_features(to_model_input(torch.from_numpy(pixels), embedder.preprocessing)),
            pre_logits=True,
        )
        expected = torch.nn.functional.normalize(network.head.neck(pooled)).numpy()
    assert pooled.shape[1] != DIM
    np.testing.assert_allclose(embedder.embed(pixels), expected, atol=1e-5)


def test_margin_is_applied_in_the_loss_only():
    logits = 30 * torch.tensor([[0.8, 0.1, -0.3], [0.2, 0.6, 0.1]])
    target = torch.tensor([0, 1])
    plain = ClassificationLoss()(logits, target)
    arcface = build_loss(kind="arcface", scale=30.0)
    cosface = build_loss(kind="cosface", scale=30.0)
    assert arcface(logits, target) > plain and cosface(logits, target) > plain
    # CosFace subtracts 0.35 from the true class's cosine; ArcFace adds 0.5 rad to its angle.
    shifted = cosface.margin_logits(logits, target) / 30
    np.testing.assert_allclose(shifted[0].numpy(), [0.45, 0.1, -0.3], atol=1e-5)
    shifted = arcface.margin_logits(logits, target) / 30
    assert shifted[1, 1].item() == pytest.approx(math.cos(math.acos(0.6) + 0.5), abs=1e-5)
    assert torch.equal(shifted[1, [0, 2]], logits[1, [0, 2]] / 30)
    no_margin = build_loss(kind="cosface", scale=30.0, margin=0.0)
    assert no_margin(logits, target).item() == pytest.approx(plain.item(), rel=1e-5)


def test_subcenter_head_takes_the_closest_subcenter():
    config = build_config(overrides={"train": {"loss": "subcenter-arcface"}, "model": {"subcenters": 3}})
    kwargs = model_arguments(config.model, config.train)
    model = create_model("keras-cnn", num_classes=4, in_chans=1, img_size=32, **kwargs)
    head = model.head.classifier
    assert head.weight.shape == (12, config.model.embedding_dim)
    embedding = torch.randn(5, config.model.embedding_dim)
    all_cosines = torch.nn.functional.normalize(embedding) @ torch.nn.functional.normalize(head.weight).T
    expected = all_cosines.view(5, 4, 3).amax(2)
    torch.testing.assert_close(head.cosine(embedding), expected)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train": {"loss": "arcface"}, "augment": {"mixup": 0.2}}, "augment.mixup"),
        ({"train": {"loss": "cosface"}, "transfer": {"linear_probe": True}}, "transfer.linear_probe"),
        ({"train": {"loss": "arcface", "margin": 2.0}}, "train.margin"),
        ({"train": {"loss": "arcface", "scale": 0}}, "train.scale"),
        ({"model": {"embedding_dim": 1}}, "model.embedding_dim"),
    ],
)
def test_refused_options_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(overrides=overrides)


def test_unknown_loss_is_one_line(capsys, class_folders, tmp_path):
    assert main(["-q", "train", str(class_folders), "--set", "train.loss=triplet", "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "train.loss" in error[0] and "arcface" in error[0]
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(class_folders), "--loss", "triplet"])
    assert exit_.value.code == 2


def test_a_frozen_backbone_still_trains_the_neck_and_cosine_classifier():
    from imgcls.data.preprocess import Preprocessing
    from imgcls.training.run import build_model

    config = build_config(overrides={"train": {"loss": "cosface"}, "transfer": {"freeze_backbone": True}})
    model = build_model(config, 3, Preprocessing(32, 3, (0.5,) * 3, (0.25,) * 3))
    assert isinstance(model, EmbeddingNet)
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_two_view_terms_reward_views_that_agree():
    from imgcls.training.losses import two_view_loss

    assert two_view_loss("arcface", 0.0, 0.1) is None  # one view: nothing to compare
    first = torch.nn.functional.normalize(torch.randn(8, DIM, generator=torch.Generator().manual_seed(0)))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).repeat(2)
    agreeing, shuffled = torch.cat([first, first]), torch.cat([first, first[torch.randperm(8)]])
    instance = two_view_loss("arcface", 1.0, 0.1)
    assert instance(agreeing, labels) < instance(shuffled, labels)
    # SupCon: a class's images on one direction cost less than every image on its own.
    supcon = two_view_loss("supcon", 0.0, 0.1)
    together = torch.eye(4).repeat_interleave(2, 0)  # images 2k and 2k+1 are class k
    apart = torch.eye(8)
    assert supcon(torch.cat([together, together]), labels) < supcon(torch.cat([apart, apart]), labels)
    assert instance(torch.cat([apart, apart]), labels) < instance(torch.cat([together, together]), labels)


def test_nt_xent_equals_pytorch_metric_learning():
    """imgcls's NT-Xent is one matrix product (pml lists every pair, ~1000x slower): the same value."""
    from pytorch_metric_learning.losses import NTXentLoss

    from imgcls.training.losses import nt_xent

    embeddings = torch.randn(2 * 24, DIM, generator=torch.Generator().manual_seed(1))
    images = torch.arange(24).repeat(2)  # rows i and i + 24 are the two views of image i
    for temperature in (0.1, 0.5):
        expected = NTXentLoss(temperature=temperature)(embeddings, images)
        assert nt_xent(embeddings, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_two_view_step_sees_two_augmented_views_of_each_image(monkeypatch, class_folders, tmp_path):
    """supcon (and train.instance_contrast) train on two independently augmented views of each
    image in one forward pass; the checkpoint is an embedding model like any other."""
    from imgcls.training import steps

    seen = []
    real = steps.forward_backward

    def spy(setup, opt, x, target, *, sync):
        seen.append((x.detach().clone(), target.clone()))
        return real(setup, opt, x, target, sync=sync)

    monkeypatch.setattr(steps, "forward_backward", spy)
    run = tmp_path / "run"
    args = ["-q", "train", str(class_folders), "--out", str(run), "--img-size", "16", "--batch-size", "6"]
    flags = ["--epochs", "1", "--model", "keras-cnn", "--loss", "supcon", "--set", "train.instance_contrast=0.5"]
    assert main([*args, *flags, "--set", "augment.translate=0.2", "--set", f"model.embedding_dim={DIM}"]) == 0
    x, target = seen[0]
    half = len(target) // 2
    assert torch.equal(target[:half], target[half:])  # the same images, in the same order
    assert not torch.equal(x[:half], x[half:])  # augmented independently
    meta = ckpt.read_metadata(run / "best.safetensors")
    assert meta["model"]["kwargs"]["embedding"]["dim"] == DIM


def test_instance_contrast_needs_an_embedding_loss():
    with pytest.raises(ConfigError, match=r"train\.instance_contrast"):
        build_config(overrides={"train": {"instance_contrast": 0.5}})
