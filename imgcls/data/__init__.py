"""Data: where images are, how they are decoded, cached, augmented and batched."""
