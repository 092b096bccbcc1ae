"""What a model is made of: per-layer output shapes, parameters, MACs, and memory estimates.

:func:`summarize` returns plain data (:class:`Summary`); the CLI renders it as
a table, JSON or CSV. Nested layers (a residual block's body and shortcut) are
rows of their own, indexed ``4.1``, ``4.2``, ... under their parent ``4``;
the parent's counts include its children, the totals count each array once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .layers import Layer, format_shape
from .model import Model

BYTES_PER_VALUE = 4  # float32
MIB = 2**20

MEMORY_DEFINITION = (
    "MiB = 2^20 bytes of float32 values. parameters: trainable and non-trainable arrays; "
    "gradients: one per trainable value; optimizer_state: slots per trainable value "
    "(sgd 0, sgd with momentum 1, adam/adamw 2, rmsprop 1, +1 with momentum, +1 centered); "
    "inputs: one batch; activations_forward: every layer's output (nested layers included, views of "
    "the input not) for batch_size samples; outputs_kept: the outputs a training forward pass leaves "
    "alive because backward reads them (as a layer's input or output); cached_for_backward: what each "
    "layer keeps besides (Layer.cache_bytes: masks, pooling argmax, kept im2col columns, "
    "pre-activations, recurrent states and work arrays); backward_gradients: the largest of a layer's "
    "output and input gradients with its kernels' temporaries (Layer.backward_bytes: per-thread partial "
    "sums of a weight gradient), alive together in its backward pass; kernel_scratch: the kernels' per-thread "
    "work arrays (the largest layer's, on the worker threads it uses); activations_training: "
    "outputs_kept + cached_for_backward + backward_gradients; total_training: parameters + "
    "gradients + optimizer_state + inputs + activations_training + kernel_scratch."
)


@dataclass
class LayerRow:
    index: str  # "4", or "4.2" for the second child of layer 4
    depth: int
    path: str  # the dotted name used by model.parameters() ("residual_1.conv2d_3")
    name: str
    type: str
    output_shape: str  # as the user writes shapes: HxWxC
    params: int  # trainable + non-trainable (BatchNorm running statistics), as Keras counts them
    trainable_params: int
    macs: int  # multiply-accumulates per sample
    mean: float | None = None  # activation statistics of a forward pass (--stats)
    std: float | None = None


@dataclass
class Summary:
    name: str
    input_shape: str
    output_shape: str
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_macs: int
    batch_size: int
    optimizer_slots: int
    memory_mib: dict[str, float] = field(default_factory=dict)
    stats_batch: int | None = None

    def up_to_depth(self, depth: int | None) -> "Summary":
        """The same summary with nested rows deeper than ``depth`` left out (0: top-level layers only);
        a parent's row already counts its children, and the totals do not change."""
        if depth is None:
            return self
        return replace(self, rows=[row for row in self.rows if row.depth <= depth])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``layers`` (name, type, output_shape, params, macs, ...) and the totals.

        A layer's ``index`` is a number, its position among its siblings (1-based);
        with ``depth`` it gives the table's labels back: ``4.2`` is index 2 at depth 1
        under the layer with index 4 at depth 0.
        """
        layers = []
        for row in self.rows:
            item = asdict(row)
            item["index"] = int(row.index.rpartition(".")[2])
            if self.stats_batch is None:
                item.pop("mean"), item.pop("std")
            else:
                item["mean"], item["std"] = _json_float(row.mean), _json_float(row.std)
            layers.append(item)
        return {
            "name": self.name,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "layers": layers,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "total_macs": self.total_macs,
            "batch_size": self.batch_size,
            "optimizer_slots": self.optimizer_slots,
            "memory_mib": self.memory_mib,
            "memory_definition": MEMORY_DEFINITION,
            **({"stats_batch": self.stats_batch} if self.stats_batch is not None else {}),
        }


def _json_float(x: float | None):
    # JSON has no inf/nan; an exploding activation must still show, so say it in words
    if x is None or math.isfinite(x):
        return x
    return str(x)


def layer_rows(model: Model) -> list[LayerRow]:
    """One row per layer, nested layers after their parent, depth first."""
    rows: list[LayerRow] = []

    def visit(layers: list[Layer], prefix: str, path_prefix: str, depth: int) -> None:
        for i, layer in enumerate(layers, start=1):
            index = f"{prefix}{i}"
            path = f"{path_prefix}{layer.name}"
            trainable = layer.param_count()
            rows.append(LayerRow(
                index=index, depth=depth, path=path, name=layer.name, type=layer.type_name,
                output_shape=format_shape(layer.out_shape), params=trainable + layer.buffer_count(),
                trainable_params=trainable, macs=int(layer.macs()),
            ))
            visit(layer.children(), f"{index}.", f"{path}.", depth + 1)

    visit(model.layers, "", "", 0)
    return rows


def optimizer_slots(optimizer_spec) -> int:
    """Arrays of optimizer state kept per trainable value (momentum, Adam's m and v, ...)."""
    if optimizer_spec is None:
        return 0
    from .optimizers import build_optimizer

    return len(build_optimizer(optimizer_spec, {}).slots)


def kept_output_bytes(layers: list[Layer], batch: int, consumer_keeps_input: bool = False) -> int:
    """Bytes of the outputs of ``layers`` (in order, nested ones included) that a training forward pass
    leaves alive: those the layer itself keeps (``keeps_output``) or the next layer keeps as its input."""
    total, keeps = 0, consumer_keeps_input
    for layer in reversed(layers):
        kept = layer.keeps_output or keeps
        total += layer.output_bytes(batch) if kept else 0
        for branch in layer.branches():  # a branch's end feeds the container's own op, which keeps nothing
            total += kept_output_bytes(branch, batch)
        keeps = kept if layer.output_is_view else layer.keeps_input
    return total


def memory_estimate(model: Model, batch_size: int, slots: int, workers: int | None = None) -> dict[str, float]:
    """Memory in MiB (2^20 bytes) of float32 arrays; see MEMORY_DEFINITION. ``workers``: the kernels'
    worker threads (default: as many as training would use here)."""
    from .kernels import chunk_workers

    trainable, buffers = model.param_count(), model.buffer_count()
    layers = [layer for _, layer in model.named_layers() if layer.out_shape]
    n, workers = batch_size, workers or chunk_workers()
    mem = {
        "parameters": (trainable + buffers) * BYTES_PER_VALUE,
        "gradients": trainable * BYTES_PER_VALUE,
        "optimizer_state": trainable * slots * BYTES_PER_VALUE,
        "inputs": n * math.prod(model.input_shape) * BYTES_PER_VALUE,
        "activations_forward": sum(la.output_bytes(n) for la in layers),
        "outputs_kept": kept_output_bytes(model.layers, n),
        "cached_for_backward": sum(la.cache_bytes(n) for la in layers),
        "backward_gradients": max((la.backward_bytes(n, workers) for la in layers), default=0),
        "kernel_scratch": max((la.scratch_bytes(n, workers) for la in layers), default=0),
    }
    mem["activations_training"] = mem["outputs_kept"] + mem["cached_for_backward"] + mem["backward_gradients"]
    mem["total_training"] = sum(mem[k] for k in ("parameters", "gradients", "optimizer_state", "inputs",
                                                 "activations_training", "kernel_scratch"))
    return {k: round(v / MIB, 4) for k, v in mem.items()}


def activation_stats(model: Model, batch: int = 8, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Mean and std of every layer's output for one forward pass (training=False) on N(0, 1) inputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    stats: dict[str, tuple[float, float]] = {}

    def record(path: str, layer: Layer, y: np.ndarray) -> None:
        y64 = np.asarray(y, dtype=np.float64)
        with np.errstate(all="ignore"):
            stats[path] = (float(y64.mean()), float(y64.std()))

    model.set_forward_hook(record)
    try:
        with np.errstate(all="ignore"):  # an exploding network is what --stats is there to show
            model.forward(x, training=False)
    finally:
        model.set_forward_hook(None)
    return stats


def summarize(model: Model, batch_size: int = 64, optimizer=None, stats: bool = False,
              stats_batch: int = 8, seed: int = 0) -> Summary:
    """Rows and totals for a built model.

    ``batch_size`` and ``optimizer`` (a spec) feed the memory estimate; with
    ``stats`` one forward pass on ``stats_batch`` random samples adds each
    layer's activation mean and std.
    """
    rows = layer_rows(model)
    slots = optimizer_slots(optimizer)
    if stats:
        found = activation_stats(model, stats_batch, seed)
        for row in rows:
            if row.path in found:
                row.mean, row.std = found[row.path]
    trainable, buffers = model.param_count(), model.buffer_count()
    return Summary(
        name=model.name,
        input_shape=format_shape(model.input_shape),
        output_shape=format_shape(model.output_shape),
        rows=rows,
        total_params=trainable + buffers,
        trainable_params=trainable,
        non_trainable_params=buffers,
        total_macs=int(model.macs()),
        batch_size=batch_size,
        optimizer_slots=slots,
        memory_mib=memory_estimate(model, batch_size, slots),
        stats_batch=stats_batch if stats else None,
    )


def summarize_config(config, model: Model | None = None, stats: bool = False, stats_batch: int = 8,
                     batch_size: int | None = None) -> Summary:
    """:func:`summarize` with the batch size, optimizer and seed of a Config."""
    from .builder import build_model

    model = model or build_model(config)
    return summarize(model, batch_size or config.train.batch_size, config.train.optimizer,
                     stats=stats, stats_batch=stats_batch, seed=config.train.seed)


CSV_COLUMNS = ("index", "name", "type", "output_shape", "params", "trainable_params", "macs")


def summary_csv_rows(summary: Summary) -> list[list]:
    """Header and one row per layer (mean/std columns with --stats)."""
    columns = CSV_COLUMNS + (("mean", "std") if summary.stats_batch is not None else ())
    return [list(columns)] + [[getattr(row, c) for c in columns] for row in summary.rows]
