"""Hostile or broken models (issue 19): training that diverges to NaN and checkpoints with
non-finite weights (item 7), metadata that would allocate gigabytes (item 5)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.errors import CheckpointError
from imgcls.inference.predictor import Predictor
from tests.helpers import make_class_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("models") / "data", per_class=8, junk=False)


@pytest.fixture(scope="module")
def trained(data) -> Path:
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "small-net"]
    assert main(args) == 0
    return run / "best.safetensors"


def _rewrite(source: Path, target: Path, change) -> Path:
    """Save a changed copy with a fresh checksum, as an attacker would."""
    tensors, meta = ckpt.load_checkpoint(source)
    meta = {k: v for k, v in meta.items() if k not in ("schema", "imgcls_version", ckpt.DIGEST_KEY)}
    change(tensors, meta)
    ckpt.save_checkpoint(target, tensors, meta)
    return target


# --- item 7: NaN --------------------------------------------------------------------------


def test_training_that_diverges_stops_with_a_clear_error_and_keeps_finite_checkpoints(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "3", "--model", "lenet"]
    assert main([*args, "--set", "optim.lr=1e8"]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "optim.lr" in err and "Traceback" not in err
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).exists():  # a checkpoint kept is one with finite weights
            tensors, _ = ckpt.load_checkpoint(run / name)
            assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), name


def test_a_checkpoint_with_non_finite_weights_is_refused_by_predictors(trained, tmp_path, capsys):
    def poison(tensors, meta):
        name = next(k for k, v in tensors.items() if v.is_floating_point())  # either tensor naming
        tensors[name] = torch.full_like(tensors[name], math.nan)

    bad = _rewrite(trained, tmp_path / "nan.safetensors", poison)
    with pytest.raises(CheckpointError, match="not finite"):
        Predictor.from_checkpoint(bad)
    image = next((trained.parents[1] / "data" / "bird").iterdir())
    assert main(["-q", "predict", str(bad), str(image), "--json"]) == 2
    assert "NaN" not in capsys.readouterr().out


# --- item 5: metadata as a memory bomb ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda meta: meta["model"].setdefault("kwargs", {}).update(width=2500), "do not match"),
        (lambda meta: meta["preprocess"].update(img_size=60000), "img_size"),
        (lambda meta: meta["preprocess"].update(std=[0, 0, 0]), "std"),
        (lambda meta: meta["preprocess"].update(max_pixels=-1), "max_pixels"),
    ],
)
def test_hostile_metadata_is_refused_quickly_before_anything_large_is_built(trained, tmp_path, change, said):
    bad = _rewrite(trained, tmp_path / "bomb.safetensors", lambda tensors, meta: change(meta))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=said):
        ckpt.load_model(bad)
    assert time.perf_counter() - started < 1.0
