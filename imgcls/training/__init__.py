"""Training: from a validated config to a run directory (setup, the epoch driver, outputs)."""
