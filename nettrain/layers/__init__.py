"""All layer types; importing this package registers every one of them.

``AnyLayerSpec`` is the discriminated union (on ``type``) of every registered
layer spec; it is what a config's ``model.layers`` list is validated against.
"""

from typing import Annotated, Union

from pydantic import Field

from .base import REGISTRY, Layer, LayerSpec, Shape, format_shape, register
from . import activations, conv, dense, dropout, norm, pooling, residual, shape  # noqa: F401  (each registers its layers)
from . import recurrent  # noqa: F401
from .container import Sequential, walk


def _any_layer_spec():
    specs = tuple(cls.Spec for cls in REGISTRY.values())
    return Annotated[Union[specs], Field(discriminator="type")]


AnyLayerSpec = _any_layer_spec()

for _cls in REGISTRY.values():  # containers refer to AnyLayerSpec by name
    _cls.Spec.model_rebuild(_types_namespace={"AnyLayerSpec": AnyLayerSpec}, force=True)

__all__ = ["REGISTRY", "AnyLayerSpec", "Layer", "LayerSpec", "Sequential", "Shape", "format_shape", "register", "walk"]
