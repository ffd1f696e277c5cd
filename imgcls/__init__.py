"""imgcls: from a folder of labelled images to a trustworthy classifier and back to predictions."""

__version__ = "0.1.0"


# The small public API, imported on first use so `import imgcls` stays fast.
_EXPORTS = {
    "create_model": "imgcls.models",
    "list_models": "imgcls.models",
    "register_model": "imgcls.models",
    "Predictor": "imgcls.inference.predictor",
    "fit": "imgcls.training.fit",
    "build_config": "imgcls.config",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
