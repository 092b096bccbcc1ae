"""A nettrain model as an ONNX graph (opset 17), checked by ``onnx.checker`` and, on request, ONNX Runtime.

The graph takes what ``model.forward`` takes -- float32 ``(N, C, H, W)`` images,
``(N, T, F)`` sequences or ``(N, F)`` vectors, the batch axis dynamic -- and returns
what it returns. With ``include_normalization`` it takes uint8 pixel values
instead, in the model's input shape, and does what ``nettrain predict`` does to
them first: scale to [0, 1] (unless ``data.normalize: none``), then subtract the
training set's mean and divide by its std, per channel.
"""

from __future__ import annotations

import json

import numpy as np

from .. import __version__
from .common import ExportError, require
from .source import ExportSource

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; newer ones are refused by older runtimes
BATCH = "batch"


def onnx_model(src: ExportSource, include_normalization: bool = False):
    """The checked ``onnx.ModelProto`` of ``src``'s model."""
    onnx = require("onnx", "ONNX export")
    from onnx import TensorProto, helper

    from . import onnx_layers, onnx_recurrent  # noqa: F401  (register their converters)
    from .onnx_ops import Graph, convert_layer

    model = src.model
    g = Graph()
    x = g.unique("pixels" if include_normalization else "input")  # taken first: a layer may have the same name
    input_type = TensorProto.UINT8 if include_normalization else TensorProto.FLOAT
    input_info = helper.make_tensor_value_info(x, input_type, [BATCH, *model.input_shape])
    if include_normalization:
        x = normalization(g, src, x)
    for layer in model.layers:
        x = convert_layer(g, layer, layer.name, x)
    output_info = helper.make_tensor_value_info(x, TensorProto.FLOAT, [BATCH, *model.output_shape])
    graph = helper.make_graph(g.nodes, src.name, [input_info], [output_info], g.initializers,
                              doc_string=f"{src.name}: exported by nettrain {__version__} from {src.origin}")
    proto = helper.make_model(graph, producer_name="nettrain", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    helper.set_model_props(proto, metadata(src, include_normalization))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{src.origin}: the exported graph fails onnx.checker ({first}); please report this") from None
    return proto


def onnx_bytes(src: ExportSource, include_normalization: bool = False) -> bytes:
    return onnx_model(src, include_normalization).SerializeToString()


def metadata(src: ExportSource, include_normalization: bool) -> dict[str, str]:
    """What Netron shows under the model's properties."""
    shape = "x".join(str(d) for d in src.model.input_shape)
    if include_normalization:
        takes = f"uint8 pixel values, N x {shape}, normalised inside the graph as nettrain predict does"
    else:
        takes = f"float32 N x {shape}, already normalised as in training"
    return {
        "nettrain_version": __version__,
        "config_name": src.name,
        "source": src.origin,
        "input": takes,
        "classes": json.dumps(src.classes),
        "epoch": str(src.epoch),
        "config": src.config_text,
    }


def normalization(g, src: ExportSource, pixels: str) -> str:
    """Cast -> scale by 1/255 -> (x - mean) / std, as ``nettrain.evaluate.prepare_inputs`` does to uint8."""
    from onnx import TensorProto

    input_shape = src.model.input_shape
    if src.normalize == "per_channel" and src.mean is None:
        raise ExportError(f"{src.origin}: no stored normalisation to include (a config's statistics come from "
                          "training); export a run folder or checkpoint, or leave out --include-normalization")
    x = g.op("Cast", [pixels], "normalization/Cast", to=TensorProto.FLOAT)
    if src.normalize != "none":
        x = g.op("Mul", [x, g.constant("normalization.scale", np.float32(1.0 / 255.0))], "normalization/scale")
    if src.mean is None or src.std is None:
        return g.op("Identity", [x], "normalization")
    mean, std = np.asarray(src.mean, np.float32), np.asarray(src.std, np.float32)
    if len(input_shape) == 3 and len(mean) == input_shape[0]:
        mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
    elif len(mean) != 1:
        raise ExportError(f"{src.origin}: {len(mean)} channel statistics do not fit the input "
                          f"{'x'.join(map(str, input_shape))}; leave out --include-normalization")
    x = g.op("Sub", [x, g.constant("normalization.mean", mean)], "normalization/Sub")
    return g.op("Div", [x, g.constant("normalization.std", std)], "normalization")


def onnx_session(data: bytes, threads: int = 1):
    """An ONNX Runtime CPU session on a serialised model."""
    ort = require("onnxruntime", "--check (running the file in ONNX Runtime)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def random_inputs(src: ExportSource, include_normalization: bool, batch: int, seed: int = 0):
    """(what the graph takes, what ``model.forward`` takes) for ``batch`` random samples."""
    from ..evaluate import prepare_inputs

    shape = (batch, *src.model.input_shape)
    rng = np.random.default_rng(seed)
    if not include_normalization:
        x = rng.standard_normal(shape, dtype=np.float32)
        return x, x
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    return pixels, prepare_inputs(pixels, src.model.input_shape, src.normalize, src.mean, src.std, "random pixels")


def check_onnx(data: bytes, src: ExportSource, include_normalization: bool = False, batch: int = 4,
               seed: int = 0) -> tuple[float, int]:
    """Run the file in ONNX Runtime on random input: (largest |difference| from nettrain's forward, samples)."""
    session = onnx_session(data)
    feed, x = random_inputs(src, include_normalization, batch, seed)
    got = session.run(None, {session.get_inputs()[0].name: feed})[0]
    want = src.model.forward(x, training=False)
    if got.shape != want.shape:
        raise ExportError(f"{src.origin}: ONNX Runtime returned shape {got.shape}, nettrain {want.shape}; "
                          "please report this")
    return float(np.max(np.abs(got.astype(np.float64) - want))), batch
