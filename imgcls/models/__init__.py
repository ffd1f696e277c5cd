"""Models: imgcls's seed architectures, every timm model, torchvision's light families and your own
modules, behind one registry."""

from imgcls.models.registry import create_model, list_models, register_model, resolve

__all__ = ["create_model", "list_models", "register_model", "resolve"]
