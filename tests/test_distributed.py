"""Training on two processes (torchrun, gloo on CPU) matches one process with the same global
batch, and its checkpoints load and resume in a single process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from imgcls.cli.main import _without_devices, main
from imgcls.training import distributed
from tests.helpers import make_class_folders, torchrun

pytestmark = pytest.mark.slow  # torchrun and other processes

# No augmentation, no dropout, no batch norm (LeNet): the two runs then compute the same
# gradients up to float rounding, so their losses must agree closely. Two batches a step:
# DDP skips the all-reduce on the first (no_sync), and the sum must still come out the same.
COMMON = [
    "--model",
    "lenet",
    "--img-size",
    "32",
    "--batch-size",
    "16",
    "--seed",
    "3",
    "--set",
    "augment.hflip=false",
    "--set",
    "augment.translate=0",
    "--set",
    "train.precision=fp32",
    "--set",
    "train.accumulate=2",
]
LOSS_TOLERANCE = 1e-4  # relative; measured: identical to the 6 decimals history.csv keeps


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_class_folders(root / "data", per_class=24, junk=False)
    two = root / "two"
    done = torchrun("-q", "train", str(data), "--out", str(two), "--epochs", "3", *COMMON)
    assert done.returncode == 0, done.stderr[-3000:]
    one = root / "one"
    args = ["-q", "train", str(data), "--out", str(one), "--epochs", "3", *COMMON, "--set", "train.threads=1"]
    assert main(args) == 0
    return data, one, two, done


def test_two_processes_match_one(runs):
    _, one, two, done = runs
    single, double = history(one), history(two)
    assert len(single) == len(double) == 3
    for a, b in zip(single, double, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=LOSS_TOLERANCE)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=LOSS_TOLERANCE)
    assert done.stdout.count("best checkpoint:") == 1  # rank 0 alone speaks and writes


def test_two_process_checkpoint_loads_and_resumes_in_one(runs, tmp_path, capsys):
    data, _, two, _ = runs
    images = sorted((data / "bird").iterdir())[:2]
    assert main(["-q", "predict", str(two / "best.safetensors"), *map(str, images)]) == 0
    assert "bird" in capsys.readouterr().out
    config = yaml.safe_load((two / "config.yaml").read_text(encoding="utf-8"))
    config["train"]["epochs"] = 4  # one more epoch, now in a single process
    (two / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["-q", "train", "--resume", "--out", str(two)]) == 0
    assert [row["epoch"] for row in history(two)] == ["1", "2", "3", "4"]


def test_shards_of_a_global_batch(monkeypatch):
    batches = [torch.arange(16), torch.arange(16, 21), torch.arange(21, 22)]
    assert distributed.shard_batches(batches) == batches  # one process: everything
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    shards = distributed.shard_batches(batches)
    assert [s.tolist() for s in shards] == [list(range(1, 16, 2)), [17, 19]]  # the 1-image batch is left out


def test_devices_flag_is_not_passed_to_workers():
    assert _without_devices(["train", "d", "--devices", "2", "--epochs", "1"]) == ["train", "d", "--epochs", "1"]
    assert _without_devices(["train", "--devices=4", "d"]) == ["train", "d"]


def test_sync_bn_is_refused_on_cpu(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    from imgcls.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA only"):
        distributed.wrap(torch.nn.BatchNorm2d(3), sync_bn=True, device=torch.device("cpu"))


def test_two_nodes_rendezvous_over_c10d(runs, tmp_path):
    """The multi-node command line of the README, as two one-process "nodes" on this machine."""
    data = runs[0]
    port = 29400 + os.getpid() % 500
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=imgcls-test",
        "-m",
        "imgcls",
        "-q",
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        *COMMON,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert len(history(tmp_path / "run")) == 2


def test_a_killed_worker_stops_the_job_and_resume_finishes_it(runs, tmp_path):
    import signal
    import time

    data = runs[0]
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "imgcls",
        "-q",
        "train",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "500",
        *COMMON,
    ]
    job = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not ((run / "history.csv").is_file() and len(history(run)) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)  # one worker dies mid-run
    job.communicate(timeout=120)  # the rest stop instead of waiting forever
    assert job.returncode != 0
    done = len(history(run))
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["train"]["epochs"] = done + 1
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    assert [int(row["epoch"]) for row in history(run)] == list(range(1, done + 2))


def _gather_in_process(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        total = 7  # odd: the shares differ in size (4 and 3 rows)
        rows = torch.arange(total * 3, dtype=torch.float32).view(total, 3)
        mine = rows[distributed.my_rows(total)] * 1.0  # what this process scored
        results[rank] = distributed.gather_rows(mine, total).tolist()
    finally:
        torch.distributed.destroy_process_group()


def _merge_in_process(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = [{"path": "shared.png", "reason": "seen by both"}, {"path": f"only-{rank}.png", "reason": "own"}]
        results[rank] = distributed.merge_lists(mine, key="path")
    finally:
        torch.distributed.destroy_process_group()


def test_lists_from_every_process_are_merged_once_each(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_merge_in_process, args=(str(tmp_path / "store"), results), nprocs=2)
        paths = [item["path"] for item in results[0]]
        assert results[0] == results[1] and paths == ["shared.png", "only-0.png", "only-1.png"]


def test_validation_scores_are_shared_out_and_gathered_in_order(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_in_process, args=(str(tmp_path / "store"), results), nprocs=2)
        expected = torch.arange(21, dtype=torch.float32).view(7, 3).tolist()
        assert results[0] == results[1] == expected


def test_what_trains_in_one_process_is_refused_under_torchrun(monkeypatch, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6, junk=False)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as if torchrun had started two
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "semi"), "--unlabeled", str(data)]) == 2
    assert "--unlabeled trains in one process" in capsys.readouterr().err
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "hog"), "--model", "hog-svm"]) == 2
    assert "a classic model trains in one process" in capsys.readouterr().err
