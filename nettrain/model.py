"""The :class:`Model`: a built network with named parameters, gradients and buffers.

A model names every parameter ``<layer>.<param>`` with container names as
prefixes (``stage2_block1.conv2d_5.kernel``), so ``parameters()``,
``gradients()`` and ``buffers()`` are flat dicts that checkpoints, optimizers
and the PyTorch parity tests all share.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .layers.base import Layer, Shape
from .layers.container import Sequential, walk


class Model:
    """A built network: a top-level :class:`Sequential` with a known input shape.

    ``input_shape`` is internal (NCHW without the batch axis: ``(C, H, W)``,
    ``(T, F)`` or ``(F,)``).
    """

    def __init__(self, layers: list[Layer], input_shape: Shape, name: str = "model"):
        self.name = name
        self.input_shape = tuple(input_shape)
        self.net = Sequential(layers, name=name)
        self.output_shape: Shape | None = None

    @property
    def layers(self) -> list[Layer]:
        return self.net.layers

    def build(self, rng: np.random.Generator | int = 0) -> "Model":
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        self.output_shape = self.net.build(self.input_shape, rng)
        return self

    # -- computation --------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self.net.forward(x, training)

    __call__ = forward

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Gradients of every layer from ``dy``; ``input_grad=False`` lets the first layer skip d/dx.

        Training never needs the gradient with respect to the images, and for the first
        convolution that is a GEMM and a col2im per step (PyTorch skips it too).
        """
        first = self.first_leaf()
        first.input_grad = input_grad
        try:
            return self.net.backward(dy)
        finally:
            first.input_grad = True

    def first_leaf(self) -> Layer:
        """The layer that sees the model's input first (descending into plain sequences only)."""
        layer: Layer = self.net
        while isinstance(layer, Sequential) and layer.layers:
            layer = layer.layers[0]
        return layer

    def zero_grads(self) -> None:
        self.net.zero_grads()

    def cast(self, dtype) -> None:
        self.net.cast(dtype)

    # -- named arrays -------------------------------------------------------
    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        return walk(self.net)

    def _collect(self, store: str) -> dict[str, np.ndarray]:
        out = {}
        for path, layer in self.named_layers():
            for key, arr in getattr(layer, store).items():
                out[f"{path}.{key}"] = arr
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name; updating them in place updates the model."""
        return self._collect("params")

    def gradients(self) -> dict[str, np.ndarray]:
        """Gradients of the last backward pass, with the same names as ``parameters()``."""
        return self._collect("grads")

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable arrays (BatchNorm running statistics) by name."""
        return self._collect("buffers")

    def load_arrays(self, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray] | None = None) -> None:
        """Copy arrays into the model by name (shapes must match exactly)."""
        for store, given in (("params", params), ("buffers", buffers or {})):
            for path, layer in self.named_layers():
                target = getattr(layer, store)
                for key in target:
                    full = f"{path}.{key}"
                    if full in given:
                        value = np.asarray(given[full])
                        if value.shape != target[key].shape:
                            raise ValueError(f"{full}: shape {value.shape} != {target[key].shape}")
                        target[key][...] = value

    def random_generators(self) -> dict[str, np.random.Generator]:
        """Per-layer generators (Dropout masks), by layer path, for checkpointing their state."""
        return {path: layer.rng for path, layer in self.named_layers() if getattr(layer, "rng", None) is not None}

    def param_count(self) -> int:
        return self.net.param_count()

    def buffer_count(self) -> int:
        return self.net.buffer_count()

    def macs(self) -> int:
        return self.net.macs()

    def set_forward_hook(self, hook: Callable[[str, Layer, np.ndarray], None] | None) -> None:
        """Call ``hook(path, layer, output)`` after every layer's forward, nested ones included."""
        paths = {id(layer): path for path, layer in self.named_layers()}
        containers = [self.net] + [layer for _, layer in self.named_layers() if hasattr(layer, "forward_hook")]
        for container in containers:
            container.forward_hook = None if hook is None else (lambda layer, y: hook(paths[id(layer)], layer, y))
