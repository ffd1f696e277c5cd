"""Models: imgcls's seed architectures and every timm model, behind one registry."""

from imgcls.models.registry import create_model, list_models, resolve

__all__ = ["create_model", "list_models", "resolve"]
