"""Models: imgcls's seed architectures, every timm model, torchvision's light families and your own
modules, behind one registry.

create_model is the registry's, extended by models.embedding: with `embedding={...}` (a
metric-learning checkpoint's metadata) the architecture becomes the backbone of an
embedding model."""

from imgcls.models.embedding import create_model
from imgcls.models.registry import list_models, register_model, resolve

__all__ = ["create_model", "list_models", "register_model", "resolve"]
