"""From a validated spec to a built :class:`~nettrain.model.Model`, shapes inferred layer by layer.

Every layer gets a unique name: its ``name:`` if given, else Keras-style
``<type>_<k>`` counted per type over the whole model (``conv2d_1``,
``conv2d_2``, ...), skipping names already taken explicitly. A layer that
cannot be built on its input raises ShapeError; the builder prefixes the
message with where the layer is: its index in the summary (``4``, or ``4.2``
inside a residual body), the file, line and YAML path it came from.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from typing import Callable

from .config import Config, ModelSpec
from .errors import ConfigError, ShapeError
from .layers import REGISTRY, Layer, LayerSpec, format_shape
from .model import Model
from .yamltree import Path, format_path


class LayerNamer:
    """Hands out names: explicit ones as given (unique), the rest ``<type>_<k>``."""

    def __init__(self, specs: list[LayerSpec]):
        self.taken: set[str] = set()
        self.counters: Counter[str] = Counter()
        duplicates = []
        for spec in _walk_specs(specs):
            if spec.name is not None:
                if spec.name in self.taken:
                    duplicates.append(spec.name)
                self.taken.add(spec.name)
        if duplicates:
            names = ", ".join(f"'{n}'" for n in dict.fromkeys(duplicates))
            raise ConfigError(f"duplicate layer names {names}; every layer name must be unique")

    def name_for(self, spec: LayerSpec) -> str:
        if spec.name is not None:
            return spec.name
        while True:
            self.counters[spec.type] += 1
            name = f"{spec.type}_{self.counters[spec.type]}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def _walk_specs(specs):
    """Every spec and the specs nested in it (residual bodies), parents first."""
    for spec in specs:
        yield spec
        for value in spec.__dict__.values():
            if isinstance(value, list) and value and all(isinstance(v, LayerSpec) for v in value):
                yield from _walk_specs(value)


def _child_field(parent: LayerSpec, child: LayerSpec) -> tuple[str, int] | None:
    """Where ``child`` sits in ``parent``: ('body', 1)."""
    for key, value in parent.__dict__.items():
        if isinstance(value, list):
            for i, v in enumerate(value):
                if v is child:
                    return key, i
    return None


def _strip_layer_prefix(message: str, layer: Layer) -> str:
    """The part of a layer's own ShapeError after ``layer 'x' (type) on input S: ``."""
    prefix = re.match(rf"layer '{re.escape(layer.name)}' \({re.escape(layer.type_name)}\) on input [^:]*: ", message)
    return message[prefix.end():] if prefix else message


def _locate_build(layer: Layer, index: str, where: str) -> None:
    """Make ``layer.build`` re-raise its ShapeError prefixed with where the layer is (innermost wins).

    The wrapper is an instance attribute that :func:`build_model` removes once the model is built.
    """
    build = layer.build

    def located_build(in_shape, rng):
        def located(detail: str) -> ShapeError:
            error = ShapeError(f"{where}: layer {index} '{layer.name}' ({layer.type_name}) "
                               f"on input {format_shape(tuple(in_shape))}: {detail}")
            error.located = True
            return error

        try:
            return build(in_shape, rng)
        except ShapeError as e:
            if getattr(e, "located", False):
                raise
            raise located(_strip_layer_prefix(str(e), layer)) from None
        except MemoryError as e:
            raise located(f"{_array_size(e)}the layer does not fit in memory; "
                          "lower its units or filters, or use a smaller input") from None
        except ValueError as e:  # NumPy: more bytes than an address space holds
            if "too big" not in str(e) and "maximum supported dimension" not in str(e):
                raise
            raise located("the layer does not fit in memory; lower its units or filters, or use a smaller input") from None

    layer.build = located_build


def _array_size(error: MemoryError) -> str:
    """``needs a 600 x 10000000 float32 array (24.0 GB): `` from NumPy's allocation error, if it says."""
    shape, dtype = getattr(error, "shape", None), getattr(error, "dtype", None)
    if shape is None or dtype is None:
        return ""
    size = math.prod(shape) * dtype.itemsize
    return f"needs a {' x '.join(map(str, shape))} {dtype} array ({size / 1e9:,.1f} GB): "


def make_layers(specs: list[LayerSpec], locate: Callable[[Path], str] = format_path,
                namer: LayerNamer | None = None) -> list[Layer]:
    """Layer objects for ``specs`` (not yet built); ``locate(yaml_path)`` names a layer's place in the file."""
    namer = namer or LayerNamer(specs)

    def make(spec: LayerSpec, index: tuple[int, ...], path: Path) -> Layer:
        children = itertools.count(1)

        def make_child(child_spec: LayerSpec) -> Layer:
            slot = _child_field(spec, child_spec)
            child_path = path + slot if slot else path + ("?",)
            return make(child_spec, index + (next(children),), child_path)

        name = namer.name_for(spec)
        layer = REGISTRY[spec.type].from_spec(spec, name, make_child)
        _locate_build(layer, ".".join(map(str, index)), locate(path))
        return layer

    return [make(spec, (i + 1,), ("model", "layers", i)) for i, spec in enumerate(specs)]


def build_model(source: Config | ModelSpec, seed: int | None = None, name: str | None = None) -> Model:
    """A built model (parameters initialised) from a Config or its ``model`` section.

    ``seed`` defaults to ``train.seed`` (0 for a bare ModelSpec). Raises
    ShapeError naming the layer that does not fit its input, ConfigError for
    duplicate layer names.
    """
    if isinstance(source, Config):
        spec, locate = source.model, source.location
        seed = source.train.seed if seed is None else seed
        name = name or source.run_name
    elif isinstance(source, ModelSpec):
        spec, locate = source, format_path
    else:
        raise TypeError(f"build_model needs a Config or a ModelSpec, got {type(source).__name__}")
    layers = make_layers(spec.layers, locate)
    model = Model(layers, spec.internal_input_shape, name=name or "model")
    try:
        return model.build(0 if seed is None else seed)
    finally:
        for _, layer in model.named_layers():  # back to the class's build: the model stays picklable
            layer.__dict__.pop("build", None)


def model_spec_of(model: Model) -> dict:
    """The ``model:`` section that rebuilds ``model``: input shape as written, every layer's full spec."""
    shape = model.input_shape
    user_shape = [shape[1], shape[2], shape[0]] if len(shape) == 3 else list(shape)
    # the whole spec, None values included: a residual's `activation: null` differs from its default
    return {"input_shape": user_shape, "layers": [layer.spec.model_dump(mode="json") for layer in model.layers]}
