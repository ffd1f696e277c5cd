"""Optional features and the pip extra that installs each.

`pip install imgcls` installs what training, evaluation and prediction need; serving, ONNX,
the data doctor, FAISS, CLIP, Grad-CAM and the metric-learning losses come with extras (`pip install 'imgcls[serve]'`,
or `[all]`). Each optional feature imports its package through `require`, so a missing one
is one line that names the extra (exit 2 on the command line), not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from imgcls.errors import MissingExtraError

# Extra -> what it adds, as written in the error message and in pyproject.toml's comments.
EXTRAS = {
    "serve": "the HTTP server (imgcls serve)",
    "onnx": "ONNX export and ONNX Runtime",
    "doctor": "the data doctor (imgcls data check)",
    "retrieval": "FAISS indexes for large galleries",
    "zeroshot": "CLIP (imgcls zeroshot, --model clip:ARCH)",
    "explain": "Grad-CAM in the report",
    "track": "TensorBoard event files (--log tensorboard)",
    "metric": "metric-learning losses (train.loss arcface, cosface, subcenter-arcface, supcon)",
}


def install_hint(extra: str) -> str:
    return f"pip install 'imgcls[{extra}]'"


def require(module: str, extra: str) -> ModuleType:
    """`module` imported, or MissingExtraError naming the extra that installs it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.partition(".")[0]
        raise MissingExtraError(
            f"{EXTRAS[extra]} needs {package}, which is not installed: {install_hint(extra)}"
        ) from None


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
