"""Worker processes for NumPy/Pillow/scikit-image work, and how many cores this process may use."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for NumPy/Pillow/scikit-image work (decoding, HOG features)."""
    # fork starts workers in milliseconds; they only run Pillow, NumPy or scikit-image, never torch.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
