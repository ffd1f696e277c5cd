"""imgcls.models.weights: the weight-file reading the trainer and the data doctor share."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from imgcls import checkpoint
from imgcls.models import weights
from imgcls.training import transfer


def test_checkpoint_prefix_matches_the_checkpoint_module():
    assert weights.CHECKPOINT_MODEL_PREFIX == checkpoint.MODEL_PREFIX


def test_trainer_loads_through_the_models_layer(tmp_path):
    assert transfer.load_pretrained is weights.load_pretrained
    assert transfer.read_state_dict is weights.read_state_dict
    tensors = {"model.fc.weight": torch.ones(2, 3), "optim.0.step": torch.zeros(())}
    save_file(tensors, tmp_path / "run.safetensors")
    assert list(weights.read_state_dict(tmp_path / "run.safetensors")) == ["fc.weight"]
