"""The pieces every ONNX layer converter shares: the graph under construction and the converter registry.

A converter turns one built nettrain layer into ONNX nodes::

    @converts("dropout")
    def dropout(g: Graph, layer, path: str, x: str) -> str:
        return g.op("Identity", [x], path)

``path`` is the layer's dotted name in the model (``stage2_block1.conv2d_5``), ``x``
the name of its input tensor; it returns the name of its output tensor. The last
node of a layer is named ``path``, its helpers ``path/Op``, and its weights
``path.key`` as in :meth:`nettrain.model.Model.parameters` (``path.W`` etc. where
ONNX wants another layout), so a graph viewer shows the nettrain names.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import helper, numpy_helper

from ..layers.activations import ELU, LeakyReLU
from .common import ExportError

Converter = Callable[["Graph", object, str, str], str]
CONVERTERS: dict[str, Converter] = {}

# the alphas of `activation: leaky_relu` / `elu` on conv2d and dense: the layers' own defaults
FUSED_ALPHA = {"leaky_relu": LeakyReLU.Spec.model_fields["alpha"].default, "elu": ELU.Spec.model_fields["alpha"].default}


def converts(*type_names: str):
    """Register the decorated function as the converter of these nettrain layer types."""

    def register(fn: Converter) -> Converter:
        for name in type_names:
            CONVERTERS[name] = fn
        return fn

    return register


class Graph:
    """Nodes and initializers of one ONNX graph; every name is unique."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()

    def unique(self, wanted: str) -> str:
        name, k = wanted, 1
        while name in self._names:
            k += 1
            name = f"{wanted}_{k}"
        self._names.add(name)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        """An initializer holding ``array`` (its dtype kept); returns its name."""
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def param(self, path: str, key: str, array: np.ndarray) -> str:
        """A float32 weight named ``path.key``."""
        return self.constant(f"{path}.{key}", np.asarray(array, dtype=np.float32))

    def ints(self, name: str, values) -> str:
        """An int64 1-D initializer (shapes, axes, slice bounds)."""
        return self.constant(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs):
        """Add a node named ``name``; its output is ``name`` unless ``outputs`` names them ("" = unused).

        Returns the output name, or the list of them when ``outputs`` is given.
        """
        name = self.unique(name)
        outs = [self.unique(o) if o else "" for o in outputs] if outputs is not None else [name]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if outputs is not None else outs[0]


def activation(g: Graph, x: str, kind: str | None, out: str, alpha: float | None = None) -> str:
    """Apply a nettrain activation by name (None or linear: ``x`` itself); softmax is over the last axis."""
    if kind is None or kind == "linear":
        return x
    if kind in ("leaky_relu", "elu"):
        alpha = FUSED_ALPHA[kind] if alpha is None else alpha
        return g.op("LeakyRelu" if kind == "leaky_relu" else "Elu", [x], out, alpha=float(alpha))
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
    if kind in simple:
        return g.op(simple[kind], [x], out)
    if kind == "softmax":
        return g.op("Softmax", [x], out, axis=-1)
    raise ExportError(f"activation {kind!r} has no ONNX form in this nettrain version")


def pre_activation_name(path: str, op_type: str, kind: str | None) -> str:
    """``path`` when no activation follows (the op is the layer's output), else ``path/Op``."""
    return path if kind in (None, "linear") else f"{path}/{op_type}"


def convert_layer(g: Graph, layer, path: str, x: str) -> str:
    """The ONNX nodes of one layer (containers recurse through this too)."""
    converter = CONVERTERS.get(layer.type_name)
    if converter is None:
        raise ExportError(f"layer '{path}' has type '{layer.type_name}', which the ONNX export does not support; "
                          "export it as safetensors instead")
    return converter(g, layer, path, x)
