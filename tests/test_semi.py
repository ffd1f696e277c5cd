"""Semi-supervised training: pseudo-label selection, weak and strong views, unlabeled folders, short runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.config import Config, ConfigError, build_config, load_config
from imgcls.data.sources import Sample
from imgcls.errors import DataError
from imgcls.training.fit import fit
from imgcls.training.semi import decode_unlabeled, select_pseudo_labels, strong_view, weak_view
from tests.helpers import make_class_folders


def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in row] for row in rows])  # softmax gives the rows back


def test_pseudo_labels_only_where_confidence_reaches_the_threshold():
    logits = _logits([[0.96, 0.02, 0.02], [0.03, 0.949, 0.021], [0.01, 0.01, 0.98], [0.4, 0.3, 0.3]])
    labels, mask = select_pseudo_labels(logits, 0.95)
    assert labels.tolist() == [0, 1, 2, 0]
    assert mask.tolist() == [True, False, True, False]
    assert select_pseudo_labels(logits, 0.3)[1].all()
    assert not select_pseudo_labels(logits, 0.99)[1].any()


def _fake_run(config: Config | None = None, channels: int = 1, val=()) -> SimpleNamespace:
    return SimpleNamespace(
        config=config or Config(),
        per_image=None,
        train=SimpleNamespace(channels=channels),
        sources=SimpleNamespace(val=tuple(val)),
    )


def test_weak_and_strong_views_differ_and_repeat_with_the_seed():
    images = torch.randint(1, 256, (16, 28, 28, 1), dtype=torch.uint8)  # no zero pixel: cutout is visible
    run = _fake_run()

    def views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)  # RandAugment draws from torch's global RNG
        generator = torch.Generator().manual_seed(seed)
        weak = weak_view(run, images, generator)
        return weak, strong_view(weak, generator)

    weak, strong = views(0)
    assert weak.shape == strong.shape == images.shape and strong.dtype == torch.uint8
    assert not torch.equal(weak, images)  # flips and shifts
    differs = (weak != strong).flatten(1).any(1)
    assert differs.all()  # every strong view is changed further
    # Cutout zeroes a 14 x 14 square centred inside the image: at least its 7 x 7 corner is in the picture.
    assert ((strong == 0).flatten(1).sum(1) >= 7 * 7).all()
    weak2, strong2 = views(0)
    assert torch.equal(weak, weak2) and torch.equal(strong, strong2)


def test_unlabeled_folder_skips_broken_files_and_ignores_junk(tmp_path):
    folder = make_class_folders(tmp_path / "unlabeled", per_class=4)  # + broken.png, empty.jpg, notes.txt, ...
    config = build_config(None, {"semi": {"unlabeled": str(folder)}, "data": {"img_size": 16}})
    cache = decode_unlabeled(config, _fake_run(config, channels=3))
    assert len(cache) == 12 and cache.images.shape == (12, 16, 16, 3)
    assert sorted(Path(s["path"]).name for s in cache.skipped) == ["broken.png", "empty.jpg"]
    subset = build_config(None, {"semi": {"unlabeled": str(folder), "max_unlabeled": 5}, "data": {"img_size": 16}})
    first = decode_unlabeled(subset, _fake_run(subset, channels=3)).paths
    assert len(first) <= 5 and first == decode_unlabeled(subset, _fake_run(subset, channels=3)).paths
    # Validation images among the unlabeled ones are only warned about (accuracy would be optimistic).
    val = [Sample(Path(p), 0) for p in cache.paths[:2]]
    assert len(decode_unlabeled(config, _fake_run(config, channels=3, val=val))) == 12


def test_unlabeled_folder_errors(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        config = build_config(None, {"semi": {"unlabeled": str(folder)}})
        with pytest.raises(DataError):
            decode_unlabeled(config, _fake_run(config))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    config = build_config(None, {"semi": {"unlabeled": str(broken)}})
    with pytest.raises(DataError, match="none of the 1 images"):
        decode_unlabeled(config, _fake_run(config))
    with pytest.raises(ConfigError):
        build_config(None, {"semi": {"threshold": 1.5}})
    data = str(make_class_folders(tmp_path / "d", 4, junk=False))
    mixing = build_config(
        None, {"data": {"train": data, "img_size": 16}, "augment": {"mixup": 0.2}, "semi": {"unlabeled": str(broken)}}
    )
    with pytest.raises(ConfigError, match="mixup"):
        fit(mixing, tmp_path / "run")  # refused before any unlabeled image is decoded


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fixmatch", "pseudo"])
def test_short_semi_supervised_run_completes_and_checkpoints(tmp_path, method):
    data = make_class_folders(tmp_path / "data", per_class=6, seed=1, junk=False)
    unlabeled = make_class_folders(tmp_path / "unlabeled", per_class=6, seed=2)  # with 2 broken files
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "--unlabeled",
        str(unlabeled),
        "--semi",
        method,
        "--epochs",
        "1",
        "--img-size",
        "16",
        "--batch-size",
        "4",
        "--model",
        "keras-cnn",
        "--set",
        "semi.mu=1",
        "--out",
        str(run),
        "-q",
    ]
    assert main(args) == 0
    for name in ("best.safetensors", "last.safetensors", "metrics.json", "history.csv", "report.html"):
        assert (run / name).is_file(), name
    config = load_config(run / "config.yaml")
    assert (config.semi.method, config.semi.unlabeled) == (method, str(unlabeled.absolute()))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    skipped = {Path(s["path"]).name for s in metrics["skipped_files"]}
    assert skipped == {"broken.png", "empty.jpg"}  # the unlabeled folder's, counted like labelled ones
    tensors, meta = ckpt.load_checkpoint(run / "last.safetensors")
    assert meta["resume"]["epoch"] == 1 and len(meta["resume"]["history"]) == 1
    # An epoch is a pass over the 18 unlabeled images: 18 // (mu 1 x batch 4) = 4 optimizer steps
    # (over the 15 labelled images it would be 3).
    assert meta["resume"]["scheduler"]["last_epoch"] == 4
    model, _, _ = ckpt.load_model(run / "best.safetensors")
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


@pytest.mark.slow
def test_ctrl_c_inside_a_semi_supervised_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch):
    """A SIGINT after step 6 of 8 (epoch 2, step 2): the epoch's progress, pseudo-label counts
    and RNG states are saved, and the resumed run ends exactly as the uninterrupted one."""
    import os
    import signal

    import imgcls.training.semi as semi_module

    data = make_class_folders(tmp_path / "data", per_class=6, seed=1, junk=False)
    unlabeled = make_class_folders(tmp_path / "unlabeled", per_class=6, seed=2, junk=False)
    args = [
        "train",
        str(data),
        "--unlabeled",
        str(unlabeled),
        "--epochs",
        "2",
        "--img-size",
        "16",
        "--batch-size",
        "4",
        "--model",
        "lenet",
        "--set",
        "semi.mu=1",
        "--set",
        "train.threads=1",
        "-q",
    ]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0

    real_step, steps = semi_module.optimizer_step, {"n": 0}

    def step_then_ctrl_c(*args):
        real_step(*args)
        steps["n"] += 1
        if steps["n"] == 6:  # 18 unlabeled images // (mu 1 x batch 4) = 4 steps an epoch
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(semi_module, "optimizer_step", step_then_ctrl_c)
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 130
    state = ckpt.read_metadata(run / "last.safetensors")["resume"]
    assert state["epoch"] == 1 and state["partial"]["step"] == 2 and state["partial"]["unlabeled_seen"] == 8
    monkeypatch.setattr(semi_module, "optimizer_step", real_step)
    assert main(["train", "--resume", "--out", str(run), "-q"]) == 0
    assert (run / "metrics.json").read_text() == (straight / "metrics.json").read_text()
    no_seconds = [line.rsplit(",", 1)[0] for line in (straight / "history.csv").read_text().splitlines()]
    assert [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()] == no_seconds
