"""The Hugging Face cache that pretrained weights are fetched into (timm's and CLIP's alike):
where it is, and whether this machine may reach the hub."""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache() -> Path:
    """The Hugging Face cache folder: HF_HUB_CACHE as set now, else huggingface_hub's own
    default (HF_HOME/hub, ~/.cache/huggingface/hub), which it read when first imported."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, when first imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().lower() in {"1", "on", "yes", "true"}
