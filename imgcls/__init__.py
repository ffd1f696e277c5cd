"""imgcls: from a folder of labelled images to a trustworthy classifier and back to predictions."""

__version__ = "0.1.0"
