"""Faults during training: Ctrl-C, SIGKILL (also in the middle of a checkpoint write), a full
disk, and damaged run files. Each test causes the fault and checks that nothing is lost:
the resumed run ends with exactly the metrics of a run that was never interrupted."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import imgcls.training.epochs as epochs_module
import imgcls.training.fit as train_module
import imgcls.training.state as state_module
import imgcls.training.steps as steps_module
from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.errors import CheckpointError

# Tiny and deterministic: one torch thread in every process, so a run and its resumed
# copy (perhaps in another process) compute the same floats. EMA, per-image rotation
# (torch's global RNG) and mixup (the epoch's generator) put every kind of state at stake.
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
    "train.eval_batch_size=64",
    "--set",
    "train.ema=true",
    "--set",
    "augment.rotation=10",
    "--set",
    "augment.mixup=0.2",
]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.helpers import make_class_folders

    return make_class_folders(tmp_path_factory.mktemp("faults") / "data", per_class=16, junk=False)


@pytest.fixture(scope="module")
def straight(data) -> dict:
    """metrics.json and history of the uninterrupted run every resumed run must equal."""
    run = data.parent / "straight"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST]) == 0
    return {"metrics": _metrics(run), "history": _history(run)}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def _history(run: Path) -> list[dict]:
    """history.csv without the seconds column, which is wall-clock time."""
    import csv

    rows = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _assert_same_run(run: Path, straight: dict) -> None:
    assert _metrics(run) == straight["metrics"]
    assert _history(run) == straight["history"]


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_saves_and_resumes_exactly(data, straight, tmp_path, monkeypatch, caplog):
    """A real SIGINT in the middle of epoch 2 (after its first optimizer step): the run
    saves last.safetensors with the epoch's progress and RNG states, says how to resume,
    and the resumed run ends exactly as the uninterrupted one."""
    real_step = steps_module.optimizer_step
    steps = {"n": 0}

    def step_then_ctrl_c(*args):
        real_step(*args)
        steps["n"] += 1
        if steps["n"] == 6:  # epoch 1 has 4 steps (39 training images, batches of 8): epoch 2, step 2
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(steps_module, "optimizer_step", step_then_ctrl_c)
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST]) == 130
    assert steps["n"] == 6  # stopped right after the step that received the signal
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted"))
    assert "in epoch 2 after step 2 of 4" in message and f"--resume --out {run}" in message
    state = ckpt.read_metadata(run / "last.safetensors")["resume"]
    assert state["epoch"] == 1 and state["partial"]["step"] == 2
    assert not (run / "metrics.json").exists()

    monkeypatch.setattr(steps_module, "optimizer_step", real_step)
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    _assert_same_run(run, straight)


@pytest.mark.slow
def test_ctrl_c_between_epochs_stops_with_the_epoch_saved(data, straight, tmp_path, monkeypatch):
    real_finish = epochs_module._finish_epoch

    def train_then_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives after the epoch's steps, during evaluation or saving
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(epochs_module, "_finish_epoch", train_then_ctrl_c)
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST]) == 130
    state = ckpt.read_metadata(run / "last.safetensors")["resume"]
    assert state["epoch"] == 1 and "partial" not in state
    monkeypatch.setattr(epochs_module, "_finish_epoch", real_finish)
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    _assert_same_run(run, straight)


def test_second_ctrl_c_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup and background jobs
    with state_module.stop_on_sigint() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs on the next bytecode; never reached
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


# --- SIGKILL, in a separate process ----------------------------------------------------------

# Runs `imgcls train` and kills its own process with SIGKILL while the second
# last.safetensors is being written: after the new bytes are in the temporary file, before
# the rename. Nothing of Python's cleanup can run, as on a power cut.
KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    import imgcls.checkpoint as ckpt
    from imgcls.cli.main import main

    real_write, real_fsync, writes = ckpt.atomic_write_bytes, os.fsync, []

    def counting_write(path, data):
        writes.append(path.name)
        return real_write(path, data)

    def fsync(fd):
        real_fsync(fd)
        if writes.count("last.safetensors") == 2 and writes[-1] == "last.safetensors":
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.atomic_write_bytes, os.fsync = counting_write, fsync
    sys.exit(main(sys.argv[1:]))
""")


def _imgcls_process(args: list[str], script: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMGCLS_PROGRESS": "0"}
    prefix = ["-c", script] if script else ["-m", "imgcls"]
    return subprocess.Popen(
        [sys.executable, *prefix, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_loses_nothing(data, straight, tmp_path):
    run = tmp_path / "run"
    proc = _imgcls_process(["-q", "train", str(data), "--out", str(run), *FAST], KILLED_MID_WRITE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    # The half-done write is only a temporary file; last.safetensors is still epoch 1's, whole.
    assert ckpt.read_metadata(run / "last.safetensors")["resume"]["epoch"] == 1
    assert list(run.glob(".last.safetensors.*.tmp"))
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    assert not list(run.glob(".*.tmp"))  # the resumed run clears what the kill left behind
    _assert_same_run(run, straight)


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_moment_then_resume_gives_the_same_metrics(data, straight, tmp_path):
    """Killed from outside as soon as the first checkpoint exists (somewhere in epoch 2)."""
    run = tmp_path / "run"
    proc = _imgcls_process(["-q", "train", str(data), "--out", str(run), *FAST])
    deadline = time.monotonic() + 300
    while not (run / "last.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (run / "last.safetensors").exists()
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    _assert_same_run(run, straight)


# Kills itself with SIGKILL during the 6th optimizer step (epoch 2's second), with
# train.checkpoint_minutes so small that last.safetensors is saved after every step.
KILLED_IN_AN_EPOCH = textwrap.dedent("""
    import os, signal, sys
    import imgcls.training.steps as train
    from imgcls.cli.main import main

    real_step, steps = train.optimizer_step, []

    def dying_step(*args):
        steps.append(1)
        if len(steps) == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        real_step(*args)

    train.optimizer_step = dying_step
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_sigkill_inside_an_epoch_resumes_from_the_periodic_checkpoint(data, straight, tmp_path):
    run = tmp_path / "run"
    args = ["-q", "train", str(data), "--out", str(run), *FAST, "--set", "train.checkpoint_minutes=1e-9"]
    proc = _imgcls_process(args, KILLED_IN_AN_EPOCH)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    state = ckpt.read_metadata(run / "last.safetensors")["resume"]
    assert state["epoch"] == 1 and state["partial"]["step"] == 1  # saved after epoch 2's first step
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    _assert_same_run(run, straight)


# --- full disk and damaged files -------------------------------------------------------------


def test_full_disk_while_saving_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    """ENOSPC while epoch 2's last.safetensors is flushed to disk (its bytes already in the
    temporary file): the run stops with a clear error and epoch 1's checkpoint is intact."""
    run = tmp_path / "run"
    real_write, real_fsync, writes = ckpt.atomic_write_bytes, os.fsync, []

    def counting_write(path, payload):
        writes.append(path.name)
        return real_write(path, payload)

    def fsync(fd):
        if writes.count("last.safetensors") == 2 and writes[-1] == "last.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", counting_write)
    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["-q", "train", str(data), "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "last.safetensors" in err and os.strerror(errno.ENOSPC) in err and "previous file is intact" in err
    assert ckpt.read_metadata(run / "last.safetensors")["resume"]["epoch"] == 1
    assert not list(run.glob(".*.tmp"))  # the temporary file is removed, freeing its space


@pytest.mark.slow
def test_damaged_last_checkpoint_is_a_clear_error_on_resume(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    last = run / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "damaged or truncated" in err and "Traceback" not in err


@pytest.mark.slow
def test_resume_state_that_does_not_fit_the_model_is_a_checkpoint_error(data, tmp_path):
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    config = (run / "config.yaml").read_text(encoding="utf-8")
    (run / "config.yaml").write_text(config.replace("name: lenet", "name: softmax"), encoding="utf-8")
    with pytest.raises(CheckpointError, match="does not fit this run"):
        train_module.fit(None, run, resume=True)
