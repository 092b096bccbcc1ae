"""Sequential: layers applied one after another (the model body and residual bodies)."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .base import Layer, LayerSpec, Shape
from .inference import forward_sequence


class Sequential(Layer):
    """Layers applied one after another; the body of a residual block is one of these."""

    per_sample_eval = True

    type_name = "sequential"

    def __init__(self, layers: list[Layer], name: str = "sequential"):
        super().__init__(LayerSpec(), name=name)
        self.layers = list(layers)
        # called as hook(layer, output) after each layer's forward: used to name the first
        # layer whose output goes non-finite and to collect activation statistics
        self.forward_hook: Callable[[Layer, np.ndarray], None] | None = None
        self.pair_fusions()  # layers built elsewhere: pair them as they stand here

    def children(self) -> list[Layer]:
        return self.layers

    def compute_output_shape(self, in_shape: Shape) -> Shape:
        for layer in self.layers:
            in_shape = layer.compute_output_shape(in_shape)
        return in_shape

    def create_params(self, in_shape: Shape, rng: np.random.Generator) -> None:
        for layer in self.layers:
            in_shape = layer.build(in_shape, rng)
        self.pair_fusions()

    def pair_fusions(self) -> None:
        """Let each BatchNorm apply the ReLU right after it here in training (built layers only); pairings
        the layers had in another container are undone first."""
        for layer in self.layers:
            if getattr(layer, "relu_after", None) is not None:
                layer.relu_after = None
            if getattr(layer, "fused_before", None) is not None:
                layer.fused_before = None
        for layer, after in zip(self.layers, self.layers[1:]):
            fuse = getattr(layer, "fuse_activation", None)
            if fuse is not None:
                fuse(after)

    def forward(self, x, training=False):
        if not training and self.forward_hook is None:
            return forward_sequence(self.layers, x)  # BatchNorm folded, ReLU fused, nothing kept
        for layer in self.layers:
            x = layer.forward(x, training)
            if self.forward_hook is not None:
                self.forward_hook(layer, x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def macs(self) -> int:
        return sum(layer.macs() for layer in self.layers)


def walk(layer: Layer, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """Every layer under ``layer`` (depth first, parents first) with its dotted path."""
    for child in layer.children():
        path = f"{prefix}{child.name}"
        yield path, child
        yield from walk(child, path + ".")
