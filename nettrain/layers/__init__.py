"""All layer types; importing this package registers every one of them."""

from .base import REGISTRY, Layer, LayerSpec, Shape, format_shape, register
from . import activations  # noqa: F401  (registers)

__all__ = ["REGISTRY", "Layer", "LayerSpec", "Shape", "format_shape", "register"]
