"""Shared fixtures: small image folders made on the spot (helpers.py makes them), Chromium."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import CHROMEDRIVER, CHROMIUM, make_class_folders

# Keep the suite within two cores and quiet: no progress bars in captured output.
os.environ.setdefault("IMGCLS_PROGRESS", "0")
# Tests never touch the network: weights come from Hugging Face caches the tests build.
os.environ["HF_HUB_OFFLINE"] = "1"
# Converted ONNX graphs (imgcls predict's cache) go to a folder of the session, not the user's cache.
os.environ["IMGCLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="imgcls-cache-")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Runs with train.threads=1 (for exact resumption) set torch's thread count for the process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", per_class=24)


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    make_class_folders(root / "train", per_class=24, seed=1)
    make_class_folders(root / "val", per_class=8, seed=2, junk=False)
    make_class_folders(root / "test", per_class=8, seed=3, junk=False)
    return root


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven through Selenium (modules using it call require_browser())."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


# Module fixtures that train a model or fit one (5-15 s each on 2 cores). The tests that use
# them are marked slow here, in one place: `make test` runs them, `make test-fast` does not.
TRAINING_FIXTURES = {
    "test_cli.py": "trained",
    "test_classic.py": "fitted",
    "test_export.py": "trained",
    "test_multilabel.py": "multilabel_run",
    "test_report.py": "report3",
    "test_retrieval.py": "trained",
    "test_retrieval_cli.py": "setup",
    "test_serve.py": "checkpoint",
    "test_server_abuse.py": "checkpoint",
}


def pytest_collection_modifyitems(items):
    for item in items:
        fixture = TRAINING_FIXTURES.get(item.path.name)
        if fixture and fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
