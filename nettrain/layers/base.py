"""The layer protocol and the registry that ties a YAML ``type`` to a spec and a class.

A layer is one class with a pydantic ``Spec`` beside it::

    @register
    class Dense(Layer):
        class Spec(LayerSpec):
            type: Literal["dense"] = "dense"
            units: PositiveInt

        def compute_output_shape(self, in_shape): ...   # -> out_shape, ShapeError if in_shape does not fit
        def create_params(self, in_shape, rng): ...     # fills self.params (and self.buffers)
        def forward(self, x, training=False): ...
        def backward(self, dy): ...                     # -> dx, fills self.grads

:meth:`Layer.build` runs the fixed sequence (Keras' ``Layer.build``): record and
check the input shape, ``compute_output_shape``, ``create_params``, zero the
gradients. A layer fills in the two hooks and never overrides ``build``.

``params`` and ``grads`` are dicts with the same keys; non-trainable arrays
(BatchNorm running statistics) live in ``buffers``. Shapes never include the
batch axis: images are ``(C, H, W)``, sequences ``(T, F)``, vectors ``(F,)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import ShapeError
from ..shapes import format_shape

Shape = tuple[int, ...]

REGISTRY: dict[str, type["Layer"]] = {}


def _accepts_bool(annotation) -> bool:
    if annotation is bool:
        return True
    return any(_accepts_bool(arg) for arg in get_args(annotation))


class _Boolean:
    """Stands in for a boolean given where a number belongs, so validation reports it as such."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()} (a boolean)"


class LayerSpec(BaseModel):
    """Fields common to every layer spec; subclasses add ``type`` and their own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data):
        # pydantic's lax mode reads `units: true` as 1; a boolean is never a size
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
                    data = {**data, key: _Boolean(value)}  # fails the field's own check, at its own path
        return data


def register(cls: type["Layer"]) -> type["Layer"]:
    """Class decorator: make ``cls`` (and its ``Spec``) available under its YAML type name."""
    field = cls.Spec.model_fields.get("type")
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__}.Spec needs a `type: Literal[...] = ...` field")
    type_name = field.default
    if type_name in REGISTRY:
        raise TypeError(f"layer type {type_name!r} registered twice")
    cls.type_name = type_name
    REGISTRY[type_name] = cls
    return cls


def _array_size(error: MemoryError) -> str:
    """``needs a 600 x 10000000 float32 array (24.0 GB): `` from NumPy's allocation error, if it says."""
    shape, dtype = getattr(error, "shape", None), getattr(error, "dtype", None)
    if shape is None or dtype is None:
        return ""
    size = math.prod(shape) * dtype.itemsize
    return f"needs a {' x '.join(map(str, shape))} {dtype} array ({size / 1e9:,.1f} GB): "


TOO_LARGE = "the layer does not fit in memory; lower its units or filters, or use a smaller input"


class Layer:
    """Base class: holds params/grads/buffers and the built shapes."""

    Spec: ClassVar[type[LayerSpec]] = LayerSpec
    type_name: ClassVar[str] = "layer"
    # What backward reads, for the memory estimate (nettrain.summary): the input (conv, dense,
    # batchnorm), the output (ReLU, tanh, a fused activation), and whether the output is a view
    # of the input (flatten), which keeps the input alive whenever the output is kept.
    keeps_input: ClassVar[bool] = True
    keeps_output: ClassVar[bool] = False
    output_is_view: ClassVar[bool] = False
    # Whether the eval forward treats each sample alone and shares no work arrays between calls,
    # so that threads may run it on slices of one batch at once (nettrain.layers.inference)
    per_sample_eval: ClassVar[bool] = False

    def __init__(self, spec: LayerSpec | None = None, name: str | None = None, **fields: Any):
        if spec is None:
            spec = self.Spec(**fields)
        elif fields:
            spec = spec.model_copy(update=fields)
        self.spec = spec
        self.name = name or spec.name or self.type_name
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.in_shape: Shape | None = None
        self.out_shape: Shape | None = None
        self.dtype = np.dtype(np.float32)
        # False when nothing needs d(loss)/d(input), e.g. for the first layer during training:
        # layers that can skip that work (conv, dense, recurrent) return None from backward
        self.input_grad = True

    @classmethod
    def from_spec(cls, spec: LayerSpec, name: str, make_child) -> "Layer":
        """Construct from a validated spec; containers build children with ``make_child(spec)``."""
        return cls(spec, name=name)

    # -- shapes -------------------------------------------------------------
    def build(self, in_shape: Shape, rng: np.random.Generator) -> Shape:
        """Create parameters for ``in_shape`` and return the output shape.

        The same steps for every layer: record and check the input shape, compute the
        output shape, create the parameters, zero the gradients. A ShapeError names this
        layer (``error.layer``), its input (``error.in_shape``) and the problem (``error.detail``).
        """
        in_shape = tuple(in_shape)
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in in_shape):
            raise self.shape_error("every size of the input must be a positive whole number", in_shape)
        self.in_shape = in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(self.compute_output_shape(in_shape))
        try:
            self.create_params(in_shape, rng)
            for key, p in self.params.items():
                self.grads[key] = np.zeros_like(p)
        except MemoryError as e:
            raise self.shape_error(f"{_array_size(e)}{TOO_LARGE}", in_shape) from None
        except ValueError as e:  # NumPy: more bytes than an address space holds
            if "too big" not in str(e) and "maximum supported dimension" not in str(e):
                raise
            raise self.shape_error(TOO_LARGE, in_shape) from None
        return self.out_shape

    def compute_output_shape(self, in_shape: Shape) -> Shape:
        """The output shape for ``in_shape`` (no batch axis); ShapeError if the layer cannot take it.

        Reads only the spec, never built state: it answers for any input shape.
        """
        return in_shape

    def create_params(self, in_shape: Shape, rng: np.random.Generator) -> None:
        """Fill ``params`` (and ``buffers``) for ``in_shape``; ``self.out_shape`` is already set."""

    def shape_error(self, message: str, in_shape: Shape | None) -> ShapeError:
        """``layer 'name' (type) on input HxWxC: message``, with the parts kept on the error."""
        shape = None if in_shape is None else tuple(in_shape)
        error = ShapeError(f"layer '{self.name}' ({self.type_name}) on input {format_shape(shape)}: {message}")
        error.layer, error.in_shape, error.detail = self, shape, message
        return error

    def require_rank(self, in_shape: Shape, ranks: tuple[int, ...], what: str) -> None:
        if len(in_shape) not in ranks:
            raise self.shape_error(f"expects {what}, got a rank-{len(in_shape)} input", in_shape)

    # -- computation --------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    # -- bookkeeping --------------------------------------------------------
    def children(self) -> list["Layer"]:
        """Sub-layers of a container (residual block, sequential); empty for a leaf."""
        return []

    def macs(self) -> int:
        """Multiply-accumulates per sample of one forward pass."""
        return 0

    def output_bytes(self, batch: int) -> int:
        """Bytes of the output array a forward pass of ``batch`` samples allocates (0 for a view of the input)."""
        return 0 if self.output_is_view else batch * math.prod(self.out_shape or ()) * self.dtype.itemsize

    def cache_bytes(self, batch: int) -> int:
        """Bytes a training forward pass keeps for the backward pass besides the layer's input and output
        (see ``keeps_input`` and ``keeps_output``): masks, pooling argmax, kept im2col columns,
        pre-activations, recurrent states and work arrays. The default, a layer that needs only its
        input or output: none."""
        return 0

    def branches(self) -> list[list["Layer"]]:
        """A container's sequences of children, each fed the container's input (a residual block: body and
        shortcut); a leaf has none."""
        children = self.children()
        return [children] if children else []

    def backward_bytes(self, batch: int, workers: int) -> int:
        """Bytes alive only while the layer's backward pass runs: by default the gradients of its output
        and its input; layers add their kernels' temporaries."""
        shapes = (self.in_shape or (), self.out_shape or ())
        return batch * sum(math.prod(s) for s in shapes) * self.dtype.itemsize

    def scratch_bytes(self, batch: int, workers: int) -> int:
        """Bytes of per-thread scratch (:func:`nettrain.kernels.scratch`) the layer's kernels use on
        ``workers`` threads; the buffers are shared by all layers, so a model needs the largest."""
        return 0

    def param_count(self) -> int:
        return sum(int(p.size) for p in self.params.values()) + sum(c.param_count() for c in self.children())

    def buffer_count(self) -> int:
        return sum(int(b.size) for b in self.buffers.values()) + sum(c.buffer_count() for c in self.children())

    def zero_grads(self) -> None:
        for k, p in self.params.items():
            self.grads[k] = np.zeros_like(p)
        for c in self.children():
            c.zero_grads()

    def cast(self, dtype) -> None:
        """Convert parameters, gradients and buffers to ``dtype`` (float64 for gradient checks)."""
        self.dtype = np.dtype(dtype)
        for store in (self.params, self.grads, self.buffers):
            for k in store:
                store[k] = store[k].astype(self.dtype)
        for c in self.children():
            c.cast(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out_shape={self.out_shape})"
