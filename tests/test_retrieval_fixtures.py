"""One tiny model shared by the retrieval test modules: trained once per test process."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from imgcls.cli.main import main
from tests.conftest import make_class_folders

KNOWN = ("猫", "狗 dog")  # trained on; "bird" is kept aside to enrol without retraining


@functools.cache
def tiny_model() -> dict[str, Path]:
    """keras-cnn at 32 px, 2 epochs, on two of conftest's colour classes (12 images each)."""
    root = Path(tempfile.mkdtemp(prefix="imgcls-retrieval-"))
    everything = make_class_folders(root / "all", per_class=12, junk=False)
    known = root / "known"
    known.mkdir()
    for name in KNOWN:
        (everything / name).rename(known / name)
    run = root / "run"
    args = ["-q", "train", str(known), "--out", str(run), "--img-size", "32", "--batch-size", "8", "--epochs", "2"]
    assert main(args) == 0
    return {"root": root, "known": known, "birds": everything / "bird", "checkpoint": run / "best.safetensors"}
