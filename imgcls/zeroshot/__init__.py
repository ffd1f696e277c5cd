"""Zero-shot classification with CLIP (open_clip, local weights only)."""

from imgcls.zeroshot.classifier import DEFAULT_PROMPTS, parse_labels, read_prompts, zeroshot_predictor
from imgcls.zeroshot.evaluate import evaluate_zeroshot, folder_labels

__all__ = [
    "DEFAULT_PROMPTS",
    "evaluate_zeroshot",
    "folder_labels",
    "parse_labels",
    "read_prompts",
    "zeroshot_predictor",
]
