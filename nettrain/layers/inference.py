"""The eval-mode forward pass of a sequence of layers, with BatchNorm folded away and ReLU fused.

In evaluation a BatchNorm is a fixed per-channel affine map, ``y = x * scale + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``. After
a convolution (or a dense layer) without an activation of its own, it folds into that layer::

    W' = W * scale  (per output channel)        b' = (b - running_mean) * scale + beta

so the BatchNorm pass disappears. A ReLU right after (a ``relu`` layer, or the layer's own
``activation: relu``) is applied by the pass that moves each batch chunk of the convolution's
GEMM output into place, so it costs no pass of its own. A residual block adds its shortcut into
its body's output in place and applies its ReLU in the same pass (:mod:`.residual`); on a
channels-last kernel set ResNet's basic block keeps the rows of its first convolution's GEMM as
they are and adds the shortcut in the second's store (:func:`residual_channels_last`). Nothing is
kept for a backward pass.

The folded weights are computed again at every forward pass rather than cached: the fold reads
the weights once (ResNet-20's 19 folds take about 0.4 ms, against about 250 ms for a forward pass
of 128 images and 2-3 ms for one image), and with nothing cached no optimizer step,
``load_arrays``, checkpoint load or training-mode update of the running statistics can leave a
stale copy behind.

:func:`forward_sequence` is what :class:`~nettrain.layers.container.Sequential` runs for
``forward(x, training=False)`` when no forward hook is installed (a hook wants every layer's
own output, so it gets the plain layer-by-layer pass).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import kernels
from .activations import ACTIVATIONS, ActivationLayer
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .norm import BatchNorm

Inplace = Callable[[np.ndarray], None]


def relu_inplace(y: np.ndarray) -> None:
    """ReLU written over ``y`` (NaN stays NaN, as in the ReLU kernels)."""
    np.maximum(y, 0, out=y)


def batchnorm_affine(bn: BatchNorm, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The eval-mode BatchNorm as ``(scale, shift)``: ``y = x * scale + shift``, in ``dtype``, with
    the same arithmetic as :meth:`BatchNorm.forward` in eval mode."""
    dtype = np.dtype(dtype)
    mean = bn.buffers["running_mean"].astype(dtype, copy=False)
    var = bn.buffers["running_var"].astype(dtype, copy=False)
    scale = 1 / np.sqrt(var + dtype.type(bn.spec.epsilon))
    if "gamma" in bn.params:
        scale *= bn.params["gamma"].astype(dtype, copy=False)
    shift = -mean * scale
    if "beta" in bn.params:
        shift += bn.params["beta"].astype(dtype, copy=False)
    return scale, shift


def folded_weights(layer: Conv2D | Dense, bn: BatchNorm | None, dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """``layer``'s kernel and bias with ``bn`` (or nothing) folded in; the output channels are the
    first axis of a conv kernel (F, C, kh, kw) and the last of a dense one (in, units)."""
    kernel, bias = layer.params["kernel"], layer.params.get("bias")
    if bn is None:
        return kernel, bias
    scale, shift = batchnorm_affine(bn, dtype)
    if isinstance(layer, Conv2D):
        kernel = kernel * scale.reshape(-1, 1, 1, 1)
    else:
        kernel = kernel * scale
    return kernel, shift if bias is None else bias * scale + shift


class Fused:
    """A convolution or dense layer, the BatchNorm folded into it (or None), and the activation
    that follows: ``"relu"`` (in the pass that stores the conv output, in place after a dense
    product), another activation (its forward), or None."""

    def __init__(self, layer: Conv2D | Dense, bn: BatchNorm | None, activation):
        self.layer, self.bn, self.activation = layer, bn, activation

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kernel, bias = folded_weights(self.layer, self.bn, x.dtype)
        inplace = relu_inplace if self.activation == "relu" else None
        if isinstance(self.layer, Conv2D):
            x = np.ascontiguousarray(x)
            y = kernels.conv2d_forward(x, kernel, bias, self.layer.geometry, kernels.backend(x.dtype),
                                       relu=inplace is not None)
        else:
            y = dense_forward(x, kernel, bias, inplace)
        if self.activation is not None and inplace is None:
            y = self.activation.forward(y)
        return y


def dense_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, after: Inplace | None) -> np.ndarray:
    """``x @ kernel + bias`` on the last axis, then ``after`` in place, by row blocks on the threads."""
    f_in, units = kernel.shape
    x2 = np.ascontiguousarray(x).reshape(-1, f_in)
    z = np.empty((x2.shape[0], units), np.result_type(x2, kernel))

    def rows(r0, r1):
        np.matmul(x2[r0:r1], kernel, out=z[r0:r1])
        if bias is not None:
            z[r0:r1] += bias
        if after is not None:
            after(z[r0:r1])

    kernels.over_batch(rows, x2.shape[0], x2.shape[0] * units)
    return z.reshape(*x.shape[:-1], units)


def _named(activation):
    """``"relu"`` for ReLU (run in place), else the activation itself."""
    return "relu" if activation is ACTIVATIONS["relu"] else activation


def _activation_after(layers: list[Layer], i: int):
    """The activation of an activation layer at ``layers[i]``: ``"relu"``, an Activation, or None."""
    if i < len(layers) and isinstance(layers[i], ActivationLayer):
        return _named(layers[i].act.activation)
    return None


def plan(layers: list[Layer], i: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The eval step that starts at ``layers[i]`` and how many layers it covers."""
    layer = layers[i]
    if type(layer) not in (Conv2D, Dense):  # not Conv1D: a BatchNorm after it normalises its positions
        return (lambda x: layer.forward(x, False)), 1
    own = layer.act.activation
    if own is not None:  # a BatchNorm after the activation cannot fold into the weights
        return Fused(layer, None, _named(own)), 1
    used = 1
    bn = layers[i + 1] if i + 1 < len(layers) and type(layers[i + 1]) is BatchNorm else None
    if bn is not None:
        used += 1
    activation = _activation_after(layers, i + used)
    if activation is not None:
        used += 1
    return Fused(layer, bn, activation), used


def residual_channels_last(block, x: np.ndarray) -> np.ndarray | None:
    """A residual block's eval forward with the activations between its two convolutions left channels
    last, or None where it does not apply (then the block runs its body as any other sequence).

    Applies to ResNet's basic block, ``conv (+BN) + ReLU, conv (+BN)`` and a ReLU after the sum, on a
    channels-last kernel set: the first convolution's GEMM output stays as it is (no store into NCHW,
    no ReLU pass), the second pads it adding the first's bias and ReLU on the way, and its store adds
    the shortcut and applies the block's ReLU (no residual pass). Measured on ResNet-20's eval forward
    of 128 images, 1 thread: the copies and stores around the GEMMs 62-64 ms against 79, the pass
    214 / 209 / 208 / 226 ms against 231 / 213 / 225 / 238 (benchmarks/README.md, round five).
    """
    ops = kernels.backend(x.dtype)
    if x.ndim != 4 or not block.act.is_relu or getattr(ops, "conv_layout", "columns") != "rows":
        return None
    layers, steps, i = block.body_layers, [], 0
    while i < len(layers):
        step, used = plan(layers, i)
        steps.append(step)
        i += used
    if len(steps) != 2 or not all(isinstance(s, Fused) and isinstance(s.layer, Conv2D) for s in steps):
        return None
    first, second = steps
    if first.activation != "relu" or second.activation is not None:
        return None
    g1, g2 = first.layer.geometry, second.layer.geometry
    if not (kernels.channels_last(g1, ops) and kernels.channels_last(g2, ops)):
        return None
    x = np.ascontiguousarray(x)
    kernel1, bias1 = folded_weights(first.layer, first.bn, x.dtype)
    z = kernels.conv2d_forward_to_rows(x, kernel1, g1, ops)
    kernel2, bias2 = folded_weights(second.layer, second.bn, x.dtype)
    shortcut, stride, offset = block._shortcut_operand(x, False)
    return kernels.conv2d_forward_from_rows(z, bias1, True, kernel2, bias2, g2, ops, shortcut, stride, offset,
                                            relu=True)


SAMPLE_SPLIT_BYTES = 4 << 20
"""Bytes of the largest activation of one batch slice that a worker thread takes through all the layers
(measured at 2 threads: 0.25 MB slices ran 2x slower than 4 MB ones, their per-layer overhead paid per slice)."""



def sample_splittable(layers: list[Layer]) -> bool:
    """Whether every layer under ``layers`` can run on slices of the batch on several threads at once
    (``per_sample_eval``; not recurrent layers, which reuse their own work arrays)."""
    return all(layer.per_sample_eval and sample_splittable(layer.children()) for layer in layers)


def largest_sample_bytes(layers: list[Layer], itemsize: int) -> int:
    """Bytes of one sample's largest input or output of any layer (0 when the layers are not built)."""
    shapes = [s for layer in layers for s in (layer.in_shape, layer.out_shape) if s is not None]
    return max((math.prod(s) for s in shapes), default=0) * itemsize


def split_slices(n: int, sample_bytes: int, workers: int) -> list[tuple[int, int]]:
    """Sample ranges of about :data:`SAMPLE_SPLIT_BYTES` of the largest activation, their count a
    multiple of ``workers`` and their sizes within one of each other."""
    step = max(1, min(n, SAMPLE_SPLIT_BYTES // max(sample_bytes, 1)))
    count = -(-n // step)
    return kernels.even_ranges(n, min(n, -(-count // workers) * workers))


def forward_sequence(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    """``layers`` applied to ``x`` in eval mode, fused where they allow.

    With several worker threads, a batch of layers that work sample by sample is cut into
    slices of a few samples, and each thread takes its slices through all the layers: one
    hand-over to the threads per pass instead of one or more per layer, no thread waits for
    the other between layers, and a slice's activations stay in cache from layer to layer
    (on this kind of machine two threads share the memory bandwidth of one). Inside a slice
    every kernel runs serially.
    """
    workers = kernels.chunk_workers()
    n = x.shape[0] if x.ndim else 0
    if workers > 1 and n > 1 and not kernels.inside_share() and sample_splittable(layers):
        return _forward_split(layers, x, workers)
    return _forward_serial(layers, x)


def _forward_split(layers: list[Layer], x: np.ndarray, workers: int) -> np.ndarray:
    slices = split_slices(x.shape[0], largest_sample_bytes(layers, x.itemsize), workers)
    outputs: dict[tuple[int, int], np.ndarray] = {}

    def work(_, share):
        for s0, s1 in share:
            outputs[(s0, s1)] = _forward_serial(layers, x[s0:s1])

    kernels.run_on_chunks(work, slices, workers)
    return np.concatenate([outputs[s] for s in slices])


def _forward_serial(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    i = 0
    while i < len(layers):
        step, used = plan(layers, i)
        x = step(x)
        i += used
    return x

