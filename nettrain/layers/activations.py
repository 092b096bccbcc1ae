"""Element-wise activations, usable as layers and as the ``activation`` field of Conv2D/Dense/Residual.

Each activation is a pair of functions: ``forward(x) -> y`` and
``backward(dy, x, y) -> dx``; the backward uses whichever of ``x`` or ``y`` is cheaper.
:class:`FusedActivation` applies one to a layer's own output and is the one place
that decides what the backward pass keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import NonNegativeFloat, PositiveFloat, create_model

from .. import kernels
from .base import Layer, LayerSpec, register


@dataclass(frozen=True)
class Activation:
    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    # False when backward reads only y: a layer then need not keep its input alive
    needs_input: bool = True


def relu_forward(x):
    return kernels.backend(x.dtype).relu_forward(x)


def relu_backward(dy, x, y):
    return kernels.backend(dy.dtype).relu_backward(dy, y)


def sigmoid(x):
    # the tanh form never overflows, unlike 1 / (1 + exp(-x))
    half = x.dtype.type(0.5)
    return half * (np.tanh(half * x) + 1)


def tanh_backward(dy, x, y):
    return dy * (1 - y * y)


def sigmoid_backward(dy, x, y):
    return dy * y * (1 - y)


def softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dy, x, y):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


# module-level functions bound with partial (not closures), so that a model holding them pickles
def _leaky_relu_forward(alpha, x):
    return np.where(x > 0, x, x * x.dtype.type(alpha))


def _leaky_relu_backward(alpha, dy, x, y):
    return np.where(x > 0, dy, dy * dy.dtype.type(alpha))


def _elu_forward(alpha, x):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def _elu_backward(alpha, dy, x, y):
    return np.where(x > 0, dy, dy * (y + y.dtype.type(alpha)))


def _identity(x):
    return x


def _identity_backward(dy, x, y):
    return dy


def leaky_relu(alpha: float) -> Activation:
    return Activation(partial(_leaky_relu_forward, alpha), partial(_leaky_relu_backward, alpha))


def elu(alpha: float) -> Activation:
    return Activation(partial(_elu_forward, alpha), partial(_elu_backward, alpha))


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(_identity, _identity_backward, needs_input=False),
    "relu": Activation(relu_forward, relu_backward, needs_input=False),
    "tanh": Activation(np.tanh, tanh_backward, needs_input=False),
    "sigmoid": Activation(sigmoid, sigmoid_backward, needs_input=False),
    "softmax": Activation(softmax, softmax_backward, needs_input=False),
    "leaky_relu": leaky_relu(0.3),
    "elu": elu(1.0),
}

ActivationName = Literal["linear", "relu", "tanh", "sigmoid", "softmax", "leaky_relu", "elu"]


class FusedActivation:
    """An activation applied to a layer's own output: ``y = act(z)`` and ``dz = act'(dy)``.

    Keeps ``y`` for the backward pass, and ``z`` only when the derivative reads it
    (leaky_relu, elu), so that a ReLU conv does not hold its pre-activation alive.
    With no activation both directions hand their array through unchanged.
    """

    def __init__(self, activation: Activation | None):
        self.activation = activation
        self._z = self._y = None

    @classmethod
    def named(cls, name: Optional[str]) -> "FusedActivation":
        """The ``activation:`` field of a spec: a name from ACTIVATIONS or null."""
        return cls(ACTIVATIONS[name] if name else None)

    def forward(self, z: np.ndarray) -> np.ndarray:
        if self.activation is None:
            return z
        y = self.activation.forward(z)
        self._z, self._y = (z if self.activation.needs_input else None), y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self.activation is None:
            return dy
        return self.activation.backward(dy, self._z, self._y)

    @property
    def is_relu(self) -> bool:
        """Whether this is a ReLU, which a layer may apply inside its own kernels (see :meth:`applied`)."""
        return self.activation is ACTIVATIONS["relu"]

    def applied(self, y: np.ndarray) -> np.ndarray:
        """Record ``y``, the activation already applied by the layer's kernels, as :meth:`forward` would."""
        self._z, self._y = None, y
        return y

    @property
    def output(self) -> np.ndarray | None:
        """The output of the last forward pass (what a ReLU's derivative reads)."""
        return self._y

    @property
    def keeps_output(self) -> bool:
        return self.activation is not None

    def cache_bytes(self, output_bytes: int) -> int:
        """The pre-activation kept besides the output, when the derivative reads it."""
        return output_bytes if self.activation is not None and self.activation.needs_input else 0


class ActivationLayer(Layer):
    """Shared machinery: subclasses set ``activation()``.

    A ReLU right after a BatchNorm is applied by the BatchNorm in training (its
    ``fused_before``, see :meth:`nettrain.layers.norm.BatchNorm.fuse_activation`): this layer
    then hands that layer's output, already rectified, through in both directions.
    """

    per_sample_eval = True

    keeps_output = True
    fused_before: Layer | None = None
    _handed_through = False

    def activation(self) -> Activation:
        return ACTIVATIONS[self.type_name]

    @property
    def is_relu(self) -> bool:
        return self.act.is_relu

    @property
    def keeps_input(self) -> bool:
        return self.act.activation.needs_input

    def create_params(self, in_shape, rng):
        self.act = FusedActivation(self.activation())

    def forward(self, x, training=False):
        before = self.fused_before
        self._handed_through = training and before is not None and before._fused_y is x
        if self._handed_through:
            return x
        return self.act.forward(x)

    def backward(self, dy):
        if self._handed_through:
            return dy
        return self.act.backward(dy)


def _activation_layer(name: str, type_name: str, doc: str | None = None, alpha=None, make=None) -> type[Layer]:
    """Register the ActivationLayer ``name`` for ``type: type_name``. With ``alpha`` (a pydantic field:
    (type, default)), its spec takes an ``alpha`` and ``make(alpha)`` gives the activation."""
    fields = {"type": (Literal[type_name], type_name)}
    body = {"__doc__": doc, "__module__": __name__, "__qualname__": name}
    if alpha is not None:
        fields["alpha"] = alpha
        body["activation"] = lambda self: make(self.spec.alpha)
    body["Spec"] = create_model("Spec", __base__=LayerSpec, __module__=__name__, **fields)
    body["Spec"].__qualname__ = f"{name}.Spec"
    return register(type(name, (ActivationLayer,), body))


ReLU = _activation_layer("ReLU", "relu")
Tanh = _activation_layer("Tanh", "tanh")
Sigmoid = _activation_layer("Sigmoid", "sigmoid")
Softmax = _activation_layer(
    "Softmax", "softmax", "Softmax over the last axis. For training, prefer logits + softmax cross-entropy.")
LeakyReLU = _activation_layer("LeakyReLU", "leaky_relu", alpha=(NonNegativeFloat, 0.3), make=leaky_relu)
ELU = _activation_layer("ELU", "elu", alpha=(PositiveFloat, 1.0), make=elu)


@register
class ActivationByName(ActivationLayer):
    """Keras' ``Activation('relu')``: any activation chosen by name."""

    class Spec(LayerSpec):
        type: Literal["activation"] = "activation"
        activation: ActivationName

    def activation(self):
        return ACTIVATIONS[self.spec.activation]
