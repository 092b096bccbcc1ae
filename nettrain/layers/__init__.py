"""All layer types; importing this package registers every one of them.

Every module of this package is imported here, and each registers its own layers
with ``@register``: a new layer is a new module, with no list to extend.

``AnyLayerSpec`` is the discriminated union (on ``type``) of every registered
layer spec; it is what a config's ``model.layers`` list is validated against.
"""

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field

from .base import REGISTRY, Layer, LayerSpec, Shape, format_shape, register
from .container import Sequential, walk

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _any_layer_spec():
    specs = tuple(cls.Spec for cls in REGISTRY.values())
    return Annotated[Union[specs], Field(discriminator="type")]


AnyLayerSpec = _any_layer_spec()

for _cls in REGISTRY.values():  # containers refer to AnyLayerSpec by name
    _cls.Spec.model_rebuild(_types_namespace={"AnyLayerSpec": AnyLayerSpec}, force=True)

__all__ = ["REGISTRY", "AnyLayerSpec", "Layer", "LayerSpec", "Sequential", "Shape", "format_shape", "register", "walk"]
