"""The errors imgcls raises on purpose.

Library code raises these with a message that says which file or key is wrong,
what is wrong and what to do; only the command line turns them into exit codes
(and the server into HTTP statuses).
"""


class ImgclsError(Exception):
    """Base of every error imgcls reports to its user without a traceback."""


class DataError(ImgclsError):
    """A dataset, folder or image cannot be used."""


class NotAnImageError(DataError):
    """The bytes are not an image format imgcls can read."""


class TooManyPixelsError(DataError):
    """An image is over the pixel limit (a decompression-bomb guard)."""


class ConfigError(ImgclsError):
    """A recipe, option or override is invalid."""


class TrainingDivergedError(ImgclsError):
    """The loss or the weights stopped being finite numbers (NaN or infinity)."""


class ModelNotFoundError(ImgclsError):
    """No model is registered (or in timm) under the asked name."""


class CheckpointError(ImgclsError):
    """A checkpoint file is missing, damaged or from an incompatible version."""


class ExportError(ImgclsError):
    """A model cannot be exported, or its export disagrees with the original."""


class MissingExtraError(ImgclsError):
    """An optional feature's package is not installed; the message names the pip extra to add."""
