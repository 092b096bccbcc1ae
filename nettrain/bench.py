"""Training and inference throughput of a config's model on random data (``nettrain bench``).

:func:`benchmark` builds the model of a config, feeds it random batches of the
config's input shape and measures

* the training step that ``nettrain train`` runs (:class:`nettrain.training.step.TrainStep`:
  forward, loss, backward, the non-finite guard, gradient clipping if configured,
  optimizer update from the config), in images per second;
* the forward pass in evaluation mode, in images per second;
* each layer's own forward and backward time (a residual block's row holds
  only its add, shortcut and activation; its body layers have rows of their own);
* memory: the process's peak resident set (which includes the interpreter and libraries,
  and a test process's earlier work), the peak of the NumPy arrays allocated from building
  the model through the warm-up steps (traced by :mod:`tracemalloc`, which sees every NumPy
  allocation but not those inside compiled kernels; numba compiles its kernels on a
  2-sample step before, so that the compiler's memory is not counted), and the estimate
  of ``nettrain summarize`` for comparison, all in MiB;
* which kernels ran (numba or NumPy).

Throughputs are medians over the timed steps, which a busy machine disturbs
less than means. The per-layer timings come from separate instrumented steps,
so the wrappers that take them never slow the throughput figures.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from . import heap, kernels
from .errors import NettrainError
from .kernels import chunk_workers
from .model import Model
from .training.step import NonFiniteStep, TrainStep


def _rusage():
    """This process's resource usage so far (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF)


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process so far, in MiB (None where the OS does not say)."""
    usage = _rusage()
    if usage is None:
        return None
    # Linux reports KiB, macOS bytes
    return usage.ru_maxrss / (1024 * 1024) if os.uname().sysname == "Darwin" else usage.ru_maxrss / 1024


def minor_faults() -> int | None:
    """Minor page faults of this process so far (None where the OS does not say)."""
    usage = _rusage()
    return None if usage is None else usage.ru_minflt


def blas_threads() -> int:
    """Threads the BLAS may use: asked of the loaded OpenBLAS when possible, else the environment, else the CPUs."""
    from .kernels import blas

    if blas().controllable:
        return blas().get()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def random_batch(model: Model, loss_type: str, batch_size: int, rng: np.random.Generator):
    """Inputs (N, *input_shape) float32 and targets that ``loss_type`` accepts for the model's output."""
    x = rng.standard_normal((batch_size, *model.input_shape), dtype=np.float32)
    out = model.output_shape
    if loss_type == "softmax_cross_entropy":
        y = rng.integers(0, out[-1], size=(batch_size, *out[:-1]))
    elif loss_type == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(batch_size, *out)).astype(np.float32)
    else:
        y = rng.standard_normal((batch_size, *out), dtype=np.float32)
    return x, y


def compile_kernels(config, seed: int = 0) -> None:
    """One training step of the config's model on 2 samples, so that numba compiles every kernel it uses."""
    from .builder import build_model

    model = build_model(config, seed=seed)
    x, y = random_batch(model, config.train.loss.type, 2, np.random.default_rng(seed))
    try:
        TrainStep.from_spec(model, config.train)(x, y)
    except NonFiniteStep:
        pass


def _timed(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class LayerTimer:
    """Wraps every layer's forward and backward with a clock; ``own`` times exclude nested layers."""

    def __init__(self, model: Model):
        self.layers = list(model.named_layers())
        self.total = {(path, phase): 0.0 for path, _ in self.layers for phase in ("forward", "backward")}
        self.stack: list[list[float]] = []

    def _wrap(self, path: str, phase: str, fn):
        def timed(*args, **kwargs):
            self.stack.append([0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                nested = self.stack.pop()[0]
                self.total[(path, phase)] += elapsed - nested
                if self.stack:
                    self.stack[-1][0] += elapsed

        return timed

    @contextmanager
    def installed(self) -> Iterator["LayerTimer"]:
        for path, layer in self.layers:
            layer.forward = self._wrap(path, "forward", layer.forward)
            layer.backward = self._wrap(path, "backward", layer.backward)
        try:
            yield self
        finally:
            for _, layer in self.layers:
                del layer.forward, layer.backward  # the class methods show through again

    def rows(self, steps: int) -> list[dict[str, Any]]:
        """Per layer: own forward/backward milliseconds per step and share of the total, costliest first."""
        total = sum(self.total.values()) or 1.0
        rows = []
        for path, layer in self.layers:
            fwd, bwd = self.total[(path, "forward")], self.total[(path, "backward")]
            rows.append({
                "name": path,
                "type": getattr(layer, "type_name", type(layer).__name__),
                "forward_ms": 1e3 * fwd / steps,
                "backward_ms": 1e3 * bwd / steps,
                "total_ms": 1e3 * (fwd + bwd) / steps,
                "share": (fwd + bwd) / total,
            })
        return sorted(rows, key=lambda r: -r["total_ms"])


@contextmanager
def kernel_path(use_fast: bool | None) -> Iterator[str]:
    """Run the block with the compiled kernels on (True), off (False) or as configured (None)."""
    if use_fast is None:
        yield kernels.kernel_path()
        return
    if use_fast and not kernels.compiled_available():
        raise NettrainError("--fast needs numba; install it with: pip install 'nettrain[fast]'")
    previous = kernels.set_compiled(use_fast)
    try:
        yield kernels.kernel_path()
    finally:
        kernels.set_compiled(previous)


def benchmark(
    config,
    batch_size: int = 128,
    steps: int = 10,
    warmup: int = 3,
    use_fast: bool | None = None,
    layer_steps: int | None = None,
    seed: int = 0,
    make_step=TrainStep.from_spec,
    shard: slice = slice(None),
) -> dict[str, Any]:
    """Measure a config's model (see the module doc); returns a JSON-ready dict.

    Keys: ``config``, ``batch_size``, ``steps``, ``warmup``, ``kernels`` (numba or
    numpy), ``threads`` (nettrain's worker threads), ``blas_threads``, ``params``, ``train_img_per_s``, ``train_step_ms``,
    ``forward_img_per_s``, ``forward_ms``, ``peak_rss_mib``, ``page_faults_per_step`` (minor faults of the
    timed training steps: pages the OS hands over afresh, see :mod:`nettrain.heap`), ``peak_traced_mib`` (None without
    warm-up steps), ``estimated_mib``, ``layers`` (rows of :meth:`LayerTimer.rows` with the GFLOP/s
    of :func:`flop_rates`) and that function's totals.

    ``make_step(model, train_spec)`` builds the step to time and ``shard`` picks the rows
    of the batch this process works on (its forward pass and memory estimate): a
    data-parallel benchmark (:mod:`nettrain.distributed.commands`) times its slice of
    the global batch.
    """
    import tracemalloc

    from .builder import build_model
    from .summary import summarize

    if batch_size < 1 or steps < 1 or warmup < 0:
        raise NettrainError(f"batch size and steps must be at least 1 and warmup at least 0 "
                            f"(got {batch_size}, {steps}, {warmup})")
    tracing = warmup > 0 and not tracemalloc.is_tracing()

    def train_step() -> None:
        try:
            step(x, y)
        except NonFiniteStep as e:  # a skipped step would time only half the work
            raise NettrainError(f"{config.run_name}: the training step went non-finite on random inputs ({e}); "
                                "lower train.optimizer.lr or set train.clip_grad_norm") from None

    with kernel_path(use_fast) as path:
        if tracing and path == "numba":
            compile_kernels(config, seed)  # compiling allocates too, but that is not the model's memory
        traced = None
        if tracing:
            tracemalloc.start()
        try:  # the traced peak: from building the model through the warm-up steps
            model = build_model(config, seed=seed)
            x, y = random_batch(model, config.train.loss.type, batch_size, np.random.default_rng(seed))
            step = make_step(model, config.train)
            _timed(train_step, warmup)
            traced = tracemalloc.get_traced_memory()[1] / 2**20 if tracing else None
        finally:
            if tracing:
                tracemalloc.stop()
        faults = minor_faults()
        train_times = _timed(train_step, steps)
        faults = None if faults is None else (minor_faults() - faults) / steps
        forward = lambda: model.forward(x[shard], training=False)  # noqa: E731
        forward_times = _timed(forward, warmup + steps)[warmup:]
        layer_steps = layer_steps or min(steps, 5)
        timer = LayerTimer(model)
        with timer.installed():
            _timed(train_step, layer_steps)
    train_s, forward_s = statistics.median(train_times), statistics.median(forward_times)
    rows = timer.rows(layer_steps)
    return {
        "config": config.run_name,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "kernels": path,
        "threads": chunk_workers(),
        "blas_threads": blas_threads(),
        "keeps_freed_memory": heap.active,
        "params": model.param_count(),
        "train_img_per_s": batch_size / train_s,
        "train_step_ms": 1e3 * train_s,
        "forward_img_per_s": batch_size / forward_s,
        "forward_ms": 1e3 * forward_s,
        "peak_rss_mib": peak_rss_mib(),
        "page_faults_per_step": faults,
        "peak_traced_mib": traced,
        "estimated_mib": summarize(model, len(range(batch_size)[shard]),
                                   config.train.optimizer).memory_mib["total_training"],
        "layers": rows,
    } | flop_rates(model, rows, batch_size, train_s, forward_s)



# -- achieved GFLOP/s against the machine's sgemm peak ------------------------------------
def sgemm_peak_gflops(threads: int, size: int = 1536, repeats: int = 3) -> float:
    """The best GFLOP/s of a float32 ``size`` x ``size`` np.matmul with the BLAS on ``threads`` threads."""
    from .kernels import blas

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    before = blas().get()
    blas().set(threads)
    try:
        best = min(_timed(lambda: np.matmul(a, a, out=out), repeats + 1)[1:])
    finally:
        blas().set(before)
    return 2 * size**3 / best / 1e9


def flop_rates(model: Model, rows: list[dict[str, Any]], batch_size: int, train_s: float,
               forward_s: float) -> dict[str, Any]:
    """GFLOP/s per layer (into ``rows``: ``forward_gflops``, ``backward_gflops``; None without MACs) and overall.

    A multiply-accumulate is 2 FLOPs; backward does 2 per MAC for the weight gradient and
    2 more for the input gradient, which training skips for the first layer. Returns ``train_gflops``,
    ``forward_gflops`` (whole model), ``sgemm_peak_gflops`` (measured here at the worker
    thread count) and ``peak_fraction`` (the training step's share of that peak).
    """
    layers, first = dict(model.named_layers()), model.first_leaf()
    train_flops = 0.0
    for row in rows:
        layer = layers[row["name"]]
        macs = 0 if layer.children() else layer.macs() * batch_size
        forward, backward = 2.0 * macs, (2.0 if layer is first else 4.0) * macs
        train_flops += forward + backward
        row["forward_gflops"] = forward / row["forward_ms"] / 1e6 if macs and row["forward_ms"] > 0 else None
        row["backward_gflops"] = backward / row["backward_ms"] / 1e6 if macs and row["backward_ms"] > 0 else None
    peak = sgemm_peak_gflops(chunk_workers())
    return {
        "train_gflops": train_flops / train_s / 1e9,
        "forward_gflops": 2.0 * model.macs() * batch_size / forward_s / 1e9,
        "sgemm_peak_gflops": peak,
        "peak_fraction": train_flops / train_s / 1e9 / peak,
    }
