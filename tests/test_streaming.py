"""Training from streamed shards (imgcls.training.streaming): chosen when it should be, trained end to
end with broken images counted, resumed exactly, and split over two processes."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest

import imgcls.training.steps as steps_module
import imgcls.training.streaming as streaming
from imgcls.cli.main import main
from imgcls.config import build_config
from imgcls.data.resolve import resolve_training_data
from imgcls.data.shards import write_shards
from imgcls.errors import ConfigError
from tests.helpers import make_class_folders, torchrun

# One reader process, one torch thread: a run and its resumed copy compute the same floats.
FAST = [
    "--img-size",
    "16",
    "--batch-size",
    "8",
    "--model",
    "lenet",
    "--epochs",
    "2",
    "--set",
    "train.threads=1",
    "--set",
    "data.decode_workers=1",
    "--set",
    "data.stream_buffer=16",
    "--set",
    "augment.mixup=0.2",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Shards of 3 classes x 24 images, with broken.png and empty.jpg packed in like the rest."""
    root = tmp_path_factory.mktemp("streaming")
    data = make_class_folders(root / "data", per_class=24)
    write_shards(data, root / "shards", shard_bytes=6000)
    return root / "shards"


def _config(train: Path, **data):
    return build_config(None, {"data": {"train": str(train), **data}})


def test_auto_streams_shards_only_when_their_pixels_would_not_fit(shards, tmp_path, monkeypatch):
    sources = resolve_training_data(shards, None, val_fraction=0.2, seed=0)
    assert not streaming.use_stream(_config(shards), sources)  # a few kB: decoded into memory
    monkeypatch.setattr(streaming, "available_memory", lambda: 10_000)  # 57 images x 32 x 32 x 3 x 2 > 10 kB
    assert streaming.use_stream(_config(shards), sources)
    assert not streaming.use_stream(_config(shards, stream="never"), sources)
    folder = make_class_folders(tmp_path / "folder", per_class=2, junk=False)
    folder_sources = resolve_training_data(folder, None, val_fraction=0.5, seed=0)
    assert not streaming.use_stream(_config(folder), folder_sources)
    with pytest.raises(ConfigError, match="not a shard folder.*imgcls data shard"):
        streaming.use_stream(_config(folder, stream="always"), folder_sources)


def test_options_that_need_the_whole_set_are_refused(shards, tmp_path, capsys):
    args = ["-q", "train", str(shards), "--out", str(tmp_path / "run"), *FAST, "--set", "data.stream=always"]
    assert main([*args, "--set", "train.balanced_sampling=true"]) == 2
    assert "train.balanced_sampling" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.slow
def test_a_streamed_run_trains_counts_broken_images_and_resumes_exactly(shards, tmp_path, monkeypatch, caplog):
    straight = tmp_path / "straight"
    with caplog.at_level(logging.INFO, logger="imgcls"):
        assert main(["-q", "train", str(shards), "--out", str(straight), *FAST, "--set", "data.stream=always"]) == 0
    assert any(r.getMessage().startswith("streaming ") for r in caplog.records)
    metrics = json.loads((straight / "metrics.json").read_text(encoding="utf-8"))
    skipped = {Path(item["path"]).parent.suffix for item in metrics["skipped_files"]}
    # broken.png and empty.jpg: skipped once each, in the stream (train) or the decoded val set
    assert len(metrics["skipped_files"]) == 2 and skipped == {".tar"}
    summary = json.loads((straight / "summary.json").read_text(encoding="utf-8"))
    sources = resolve_training_data(shards, None, val_fraction=0.2, seed=0)
    assert summary["train images"] == len(sources.train)  # counted from the index, unread ones too
    report = (straight / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 16  # gallery images read out of their shards

    real_step, steps = steps_module.optimizer_step, {"n": 0}

    def step_then_ctrl_c(*args):
        real_step(*args)
        steps["n"] += 1
        if steps["n"] == 8:  # inside epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(steps_module, "optimizer_step", step_then_ctrl_c)
    run = tmp_path / "run"
    assert main(["-q", "train", str(shards), "--out", str(run), *FAST, "--set", "data.stream=always"]) == 130
    monkeypatch.setattr(steps_module, "optimizer_step", real_step)
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    assert (run / "metrics.json").read_text() == (straight / "metrics.json").read_text()
    no_seconds = [line.rsplit(",", 1)[0] for line in (straight / "history.csv").read_text().splitlines()]
    assert [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()] == no_seconds


@pytest.mark.slow
def test_two_processes_stream_their_own_shards(shards, tmp_path):
    out = tmp_path / "two"
    done = torchrun("-q", "train", str(shards), "--out", str(out), *FAST, "--set", "data.stream=always")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and done.stdout.count("best checkpoint:") == 1
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(metrics["skipped_files"]) == 2  # broken.png and empty.jpg, whichever process met them
    assert main(["-q", "evaluate", str(out / "best.safetensors"), str(shards), "--out", str(tmp_path / "eval")]) == 0
