"""Real data: Fashion-MNIST written as class folders, then trained through the command line.

Needs Debian's dataset-fashion-mnist package (CI installs it). Without it the test is
skipped on a developer's machine and fails in CI, where it must run.
"""

from __future__ import annotations

import json
import os

import pytest

from imgcls.cli.main import main
from imgcls.data.builtin import find_fashion_mnist

pytestmark = pytest.mark.slow  # real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_mnist(tmp_path_factory):
    if find_fashion_mnist() is None:
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is missing in CI: .ci/run must install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fm") / "fashion-mnist"
    assert main(["-q", "data", "get", "fashion-mnist", "--out", str(out)]) == 0
    return out


def test_written_folders_hold_the_official_split(fashion_mnist):
    for split, total in (("train", 60_000), ("test", 10_000)):
        folders = sorted(p for p in (fashion_mnist / split).iterdir() if p.is_dir())
        assert len(folders) == 10
        counts = {p.name: sum(1 for _ in p.iterdir()) for p in folders}
        assert sum(counts.values()) == total and set(counts.values()) == {total // 10}


def test_softmax_regression_reaches_082_in_three_epochs(fashion_mnist, tmp_path):
    """d2l reports about 0.83-0.85 test accuracy for softmax regression on Fashion-MNIST."""
    run = tmp_path / "softmax"
    args = [
        "-q",
        "train",
        str(fashion_mnist / "train"),
        "--val",
        str(fashion_mnist / "test"),
        "--model",
        "softmax",
        "--img-size",
        "28",
        "--epochs",
        "3",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_samples"] == 10_000 and metrics["skipped_files"] == []
    assert metrics["accuracy"] >= 0.82, metrics["accuracy"]
