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
from collections import Counter
from typing import Callable

from .config import Config, ModelSpec
from .errors import ConfigError, ShapeError
from .layers import REGISTRY, Layer, LayerSpec, format_shape
from .model import Model
from .config.yamltree import Path, format_path


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


class Places(dict):
    """Where each layer made from the config sits: ``{layer: (index, where)}``, e.g. ``('4.2', 'net.yaml:8: ...')``."""

    def locate(self, error: ShapeError, model: Model) -> ShapeError:
        """``error`` prefixed with the place of the innermost config layer at or around the one that raised it.

        A layer the config did not list (a residual's projection shortcut) is placed by its owner.
        """
        layer = getattr(error, "layer", None)
        in_shape = getattr(error, "in_shape", None)
        if layer not in self:
            paths = {id(lay): path for path, lay in model.named_layers()}
            by_path = {path: lay for path, lay in model.named_layers()}
            path = paths.get(id(layer), "")
            while path and by_path[path] not in self:
                path = path.rpartition(".")[0]
            if not path:
                return error
            layer = by_path[path]
            in_shape = layer.in_shape
        index, where = self[layer]
        located = ShapeError(f"{where}: layer {index} '{layer.name}' ({layer.type_name}) "
                             f"on input {format_shape(in_shape)}: {error.detail}")
        located.layer, located.in_shape, located.detail = layer, in_shape, error.detail
        return located


def make_layers(specs: list[LayerSpec], locate: Callable[[Path], str] = format_path,
                namer: LayerNamer | None = None, places: Places | None = None) -> list[Layer]:
    """Layer objects for ``specs`` (not yet built); ``locate(yaml_path)`` names a layer's place in the
    file, recorded in ``places`` if given."""
    namer = namer or LayerNamer(specs)

    def make(spec: LayerSpec, index: tuple[int, ...], path: Path) -> Layer:
        children = itertools.count(1)

        def make_child(child_spec: LayerSpec) -> Layer:
            slot = _child_field(spec, child_spec)
            child_path = path + slot if slot else path + ("?",)
            return make(child_spec, index + (next(children),), child_path)

        name = namer.name_for(spec)
        layer = REGISTRY[spec.type].from_spec(spec, name, make_child)
        if places is not None:
            places[layer] = (".".join(map(str, index)), locate(path))
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
    places = Places()
    layers = make_layers(spec.layers, locate, places=places)
    model = Model(layers, spec.internal_input_shape, name=name or "model")
    try:
        return model.build(0 if seed is None else seed)
    except ShapeError as e:
        raise places.locate(e, model) from None
