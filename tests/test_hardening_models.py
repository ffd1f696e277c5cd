"""Hostile or broken models (issue 19): training that diverges to NaN and checkpoints with
non-finite weights (item 7), metadata that would allocate gigabytes (item 5)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.errors import CheckpointError
from imgcls.inference.predictor import Predictor
from tests.conftest import make_class_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("models") / "data", per_class=8, junk=False)


@pytest.fixture(scope="module")
def trained(data) -> Path:
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "lenet"]
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
        name = next(k for k, v in tensors.items() if k.startswith(ckpt.MODEL_PREFIX) and v.is_floating_point())
        tensors[name] = torch.full_like(tensors[name], math.nan)

    bad = _rewrite(trained, tmp_path / "nan.safetensors", poison)
    with pytest.raises(CheckpointError, match="not finite"):
        Predictor.from_checkpoint(bad)
    image = next((trained.parents[1] / "data" / "bird").iterdir())
    assert main(["-q", "predict", str(bad), str(image), "--json"]) == 2
    assert "NaN" not in capsys.readouterr().out
