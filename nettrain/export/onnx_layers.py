"""ONNX converters of the feed-forward layers: convolution, pooling, dense, batch norm, shapes, residual blocks.

Inference semantics throughout (dropout is the identity, batch norm uses its running
statistics). Padding is always explicit: ``pads`` are ``[top, left, bottom, right]``
from the layer's own resolved padding, so ``same``'s odd pixel lands after (bottom,
right) as in nettrain; average pooling leaves padding out of the count
(``count_include_pad=0``), max pooling never picks it.
"""

from __future__ import annotations

import numpy as np

from .onnx_ops import Graph, activation, convert_layer, converts, pre_activation_name

INT64_MAX = np.iinfo(np.int64).max


def onnx_pads(pad: tuple[int, int, int, int]) -> list[int]:
    """nettrain's (top, bottom, left, right) -> ONNX's [top, left, bottom, right]."""
    top, bottom, left, right = pad
    return [top, left, bottom, right]


@converts("conv2d")
def conv2d(g: Graph, layer, path: str, x: str) -> str:
    return conv(g, layer, path, x, list(layer.kernel), list(layer.stride), list(layer.dilation), onnx_pads(layer.pad))


@converts("conv1d")
def conv1d(g: Graph, layer, path: str, x: str) -> str:
    """A 1-D Conv on (N, C, L): the layer's height-1 geometry without its height axis."""
    _, _, left, right = layer.pad
    return conv(g, layer, path, x, [layer.kernel[1]], [layer.stride[1]], [layer.dilation[1]], [left, right])


def conv(g: Graph, layer, path: str, x: str, kernel, strides, dilations, pads) -> str:
    kind = layer.spec.activation
    inputs = [x, g.param(path, "kernel", layer.params["kernel"])]
    if "bias" in layer.params:
        inputs.append(g.param(path, "bias", layer.params["bias"]))
    y = g.op("Conv", inputs, pre_activation_name(path, "Conv", kind), kernel_shape=kernel, strides=strides,
             dilations=dilations, pads=pads)
    return activation(g, y, kind, path)


@converts("dense")
def dense(g: Graph, layer, path: str, x: str) -> str:
    """Gemm (kernel ``(in, out)``, ``transB=0``) on vectors; MatMul + Add per timestep of sequences."""
    kind = layer.spec.activation
    kernel = g.param(path, "kernel", layer.params["kernel"])
    bias = g.param(path, "bias", layer.params["bias"]) if "bias" in layer.params else None
    if len(layer.in_shape) == 1:
        y = g.op("Gemm", [x, kernel] + ([bias] if bias else []), pre_activation_name(path, "Gemm", kind), transB=0)
    elif bias is None:
        y = g.op("MatMul", [x, kernel], pre_activation_name(path, "MatMul", kind))
    else:
        y = g.op("Add", [g.op("MatMul", [x, kernel], f"{path}/MatMul"), bias], pre_activation_name(path, "Add", kind))
    return activation(g, y, kind, path)


@converts("maxpool2d", "avgpool2d")
def pool2d(g: Graph, layer, path: str, x: str) -> str:
    window = dict(kernel_shape=list(layer.pool), strides=list(layer.stride), pads=onnx_pads(layer.pad))
    if layer.type_name == "maxpool2d":
        return g.op("MaxPool", [x], path, **window)
    return g.op("AveragePool", [x], path, count_include_pad=0, **window)


@converts("global_avgpool2d")
def global_avgpool2d(g: Graph, layer, path: str, x: str) -> str:
    return g.op("Flatten", [g.op("GlobalAveragePool", [x], f"{path}/GlobalAveragePool")], path, axis=1)


@converts("batchnorm")
def batchnorm(g: Graph, layer, path: str, x: str) -> str:
    """BatchNormalization over channels (images) or features (vectors; sequences transposed to (N, F, T))."""
    features = layer.buffers["running_mean"].shape[0]
    gamma = layer.params.get("gamma", np.ones(features, np.float32))
    beta = layer.params.get("beta", np.zeros(features, np.float32))
    stats = [g.param(path, "gamma" if "gamma" in layer.params else "ones", gamma),
             g.param(path, "beta" if "beta" in layer.params else "zeros", beta),
             g.param(path, "running_mean", layer.buffers["running_mean"]),
             g.param(path, "running_var", layer.buffers["running_var"])]
    epsilon = float(layer.spec.epsilon)
    if len(layer.in_shape) != 2:
        return g.op("BatchNormalization", [x, *stats], path, epsilon=epsilon)
    features_first = g.op("Transpose", [x], f"{path}/to_NFT", perm=[0, 2, 1])
    y = g.op("BatchNormalization", [features_first, *stats], f"{path}/BatchNormalization", epsilon=epsilon)
    return g.op("Transpose", [y], path, perm=[0, 2, 1])


@converts("dropout")
def dropout(g: Graph, layer, path: str, x: str) -> str:
    return g.op("Identity", [x], path)


@converts("flatten")
def flatten(g: Graph, layer, path: str, x: str) -> str:
    return g.op("Flatten", [x], path, axis=1)  # NCHW order, as nettrain's reshape(N, -1)


@converts("reshape")
def reshape(g: Graph, layer, path: str, x: str) -> str:
    return g.op("Reshape", [x, g.ints(f"{path}.shape", [-1, *layer.out_shape])], path)


@converts("relu", "tanh", "sigmoid", "softmax", "leaky_relu", "elu", "activation")
def activation_layer(g: Graph, layer, path: str, x: str) -> str:
    kind = layer.spec.activation if layer.type_name == "activation" else layer.type_name
    y = activation(g, x, kind, path, getattr(layer.spec, "alpha", None))
    return g.op("Identity", [x], path) if y == x else y


@converts("residual")
def residual(g: Graph, layer, path: str, x: str) -> str:
    """act(body(x) + shortcut(x)); zero_pad subsamples by the stride and pads channels before and after."""
    y = x
    for child in layer.body_layers:
        y = convert_layer(g, child, f"{path}.{child.name}", y)
    kind = layer.spec.shortcut
    short = x
    if kind == "projection":
        for child in layer.shortcut_layers:
            short = convert_layer(g, child, f"{path}.{child.name}", short)
    elif kind == "zero_pad":
        s = layer.stride
        if s > 1:
            short = g.op("Slice", [x, g.ints(f"{path}/shortcut_starts", [0, 0]),
                                   g.ints(f"{path}/shortcut_ends", [INT64_MAX, INT64_MAX]),
                                   g.ints(f"{path}/shortcut_axes", [2, 3]), g.ints(f"{path}/shortcut_steps", [s, s])],
                         f"{path}/shortcut_subsample")
        before, after = layer.channel_pad
        if before or after:
            short = g.op("Pad", [short, g.ints(f"{path}/shortcut_pads", [0, before, 0, 0, 0, after, 0, 0])],
                         f"{path}/shortcut_pad", mode="constant")
    kind = layer.spec.activation
    return activation(g, g.op("Add", [y, short], pre_activation_name(path, "Add", kind)), kind, path)
