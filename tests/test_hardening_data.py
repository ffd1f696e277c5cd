"""Attacks on the data readers (issue 19, items 1 and 2): datasets that link outside themselves,
and files that are not files (a FIFO, a link to /dev/zero) or are too large.

The commands run in a subprocess with a timeout: before these were closed, the attacks walked
the whole filesystem or hung for ever, and a thread cannot be stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from imgcls.data.decode import decode_image
from imgcls.data.reader import read_image_file
from imgcls.data.resolve import resolve_training_data
from imgcls.errors import DataError
from tests.helpers import make_class_folders

ROOT = Path(__file__).resolve().parents[1]


def imgcls(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run the command line; on a timeout its whole process group (decode workers too) is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGCLS_PROGRESS": "0"}
    argv = [sys.executable, "-m", "imgcls", "-q", *args]
    with subprocess.Popen(argv, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", per_class=6, junk=False)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder of images outside the dataset, as a system icon folder would be."""
    return make_class_folders(tmp_path / "elsewhere", per_class=5, seed=3, junk=False) / "bird"


# --- item 1: links outside the dataset ------------------------------------------------------


def test_a_link_to_the_filesystem_root_is_not_followed_by_data_check(data):
    (data / "bird" / "everything").symlink_to("/", target_is_directory=True)
    result = imgcls("data", "check", str(data), "--json", "--no-label-errors", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"] == 18  # 3 classes of 6: nothing from the rest of the machine
    assert "everything" in result.stderr and "outside" in result.stderr  # listed as skipped, with the reason


def test_training_data_stays_inside_its_root_after_resolving_links(data, elsewhere, caplog):
    (data / "bird" / "icons").symlink_to(elsewhere, target_is_directory=True)
    (data / "bird" / "one.png").symlink_to(next(elsewhere.iterdir()))
    (data / "linked-class").symlink_to(elsewhere, target_is_directory=True)
    (data / "bird" / "loop").symlink_to(data / "bird", target_is_directory=True)
    sources = resolve_training_data(data, val_fraction=0.5)
    used = [s.path for s in sources.train + sources.val]
    assert len(used) == 18 and sources.classes == ("bird", "狗 dog", "猫")
    assert all(os.path.realpath(p).startswith(os.path.realpath(data) + os.sep) for p in used)
    said = " ".join(r.getMessage() for r in caplog.records)
    for name in ("icons", "one.png", "linked-class"):
        assert name in said
    assert "outside" in said and "loop" in said


def test_allow_outside_follows_links_for_folders_too(data, elsewhere):
    (data / "bird" / "icons").symlink_to(elsewhere, target_is_directory=True)
    sources = resolve_training_data(data, val_fraction=0.5, allow_outside=True)
    assert len(sources.train + sources.val) == 18 + 5


def test_a_link_inside_the_dataset_is_followed(data):
    (data / "bird" / "same").symlink_to(data / "猫", target_is_directory=True)
    sources = resolve_training_data(data, val_fraction=0.5)
    assert len(sources.train + sources.val) == 18 + 6


# --- item 2: one reader for image files -----------------------------------------------------


@pytest.fixture
def hostile(data: Path) -> Path:
    os.mkfifo(data / "bird" / "img.png")
    (data / "bird" / "zero.png").symlink_to("/dev/zero")
    return data


def test_a_fifo_and_dev_zero_are_skipped_by_data_check(hostile):
    # --allow-outside: the link to /dev/zero leaves the dataset, so it must meet the reader itself
    result = imgcls("data", "check", str(hostile), "--json", "--no-label-errors", "--allow-outside", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    unreadable = {Path(item["path"]).name: item["reason"] for item in report["unreadable"]}
    assert set(unreadable) == {"img.png", "zero.png"}
    assert all("not a regular file" in reason for reason in unreadable.values())


def test_a_fifo_and_dev_zero_are_skipped_by_data_shard(hostile, tmp_path):
    out = tmp_path / "shards"
    result = imgcls("data", "shard", str(hostile), "--out", str(out), "--allow-outside", timeout=60)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["count"] == 18
    assert "img.png" in result.stderr and "zero.png" in result.stderr
    assert not list(out.glob("*.tmp"))


def test_the_reader_refuses_what_is_not_a_regular_file_and_files_over_the_bound(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(DataError, match="not a regular file"):
        read_image_file(tmp_path / "fifo.png")  # opened non-blocking: no hang without a writer
    with pytest.raises(DataError, match="not a regular file"):
        read_image_file(Path("/dev/zero"))
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 3000)
    with pytest.raises(DataError, match="over the limit"):
        read_image_file(big, max_bytes=2000)
    with pytest.raises(DataError, match="over the limit"):
        decode_image(big, max_bytes=2000)
    assert read_image_file(big, max_bytes=3000) == b"\0" * 3000


# --- item 9: two runs into one --out --------------------------------------------------------


def test_two_runs_started_together_into_one_out_folder_do_not_both_run(data, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "15", "--model", "softmax"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGCLS_PROGRESS": "0"}
    argv = [sys.executable, "-m", "imgcls", "-q", *args]
    both = [subprocess.Popen(argv, stdout=PIPE, stderr=PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    for p in both:
        p.stdout.close(), p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another imgcls run" in refused and "Traceback" not in refused
