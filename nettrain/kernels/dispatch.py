"""Which kernel set runs: the NumPy reference kernels or the compiled (numba) ones.

A kernel set is a namespace with one function for each name in :data:`KERNEL_NAMES`,
plus its ``name`` and the ``dtypes`` it is written for (None: any). Sets are keyed by
name: :data:`LOADERS` says how to load each, :data:`BACKENDS` holds those loaded. A
new array backend is one more entry in :data:`LOADERS`; a kernel it lacks is taken
from the reference set.

Float32 arrays run the set named by :func:`kernel_path`: ``"numba"`` when numba
imports and the environment does not set ``NETTRAIN_FAST=0`` (or false/no/off),
else ``"numpy"``; :func:`use_kernels` (or :func:`set_compiled`) changes it. Arrays of
a dtype the chosen set is not written for (float64 in gradient checks) run the
reference set. numba is imported only when the compiled set is first asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace

import numpy as np

from . import reference

KERNEL_NAMES = (
    "im2col",
    "col2im",
    "channels_major",
    "samples_major",
    "im2row",
    "row2im",
    "rows_to_images",
    "images_to_rows",
    "pad_rows",
    "padded_to_rows",
    "rows_to_images_add",
    "max_pool_forward",
    "max_pool_backward",
    "avg_pool_forward",
    "avg_pool_backward",
    "batchnorm_stats",
    "batchnorm_affine",
    "batchnorm_backward",
    "batchnorm_relu_affine",
    "batchnorm_relu_backward",
    "relu_forward",
    "relu_backward",
    "residual_add",
    "rnn_cell_forward",
    "rnn_cell_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_cell_infer",
    "lstm_scan_backward",
    "gru_cell_forward",
    "gru_cell_backward",
    "adam_update",
)
"""What every kernel set provides."""

REFERENCE, COMPILED = "numpy", "numba"


def build_kernel_set(name: str, found: Mapping[str, Callable], dtypes: Iterable | None = None,
                     fallback: SimpleNamespace | None = None, conv_layout: str = "columns") -> SimpleNamespace:
    """The kernel set ``name`` from the functions in ``found``; a kernel missing there comes from ``fallback``.

    ``conv_layout`` is the convolution GEMM layout the set runs faster: ``"columns"``
    (im2col, channels first) or ``"rows"`` (im2row, channels last; see
    :func:`nettrain.kernels.gemm.channels_last`). Raises ValueError when a kernel is
    missing and there is no fallback.
    """
    missing = [k for k in KERNEL_NAMES if k not in found]
    if missing and fallback is None:
        raise ValueError(f"kernel set {name!r} lacks {', '.join(missing)}")
    kernels = {k: found[k] if k in found else getattr(fallback, k) for k in KERNEL_NAMES}
    if conv_layout not in ("columns", "rows"):
        raise ValueError(f"kernel set {name!r}: conv_layout must be 'columns' or 'rows', got {conv_layout!r}")
    return SimpleNamespace(name=name, dtypes=None if dtypes is None else frozenset(map(np.dtype, dtypes)),
                           conv_layout=conv_layout, **kernels)


NUMPY = build_kernel_set(REFERENCE, reference.KERNELS)
"""The reference kernels, for arrays of any dtype."""


def _load_compiled() -> SimpleNamespace:
    try:
        from . import compiled
    except ImportError as err:
        raise ImportError(f"the fast kernels need numba: pip install 'nettrain[fast]' ({err})") from err
    return build_kernel_set(COMPILED, compiled.KERNELS, compiled.DTYPES, fallback=NUMPY,
                            conv_layout=compiled.CONV_LAYOUT)


LOADERS: dict[str, Callable[[], SimpleNamespace]] = {REFERENCE: lambda: NUMPY, COMPILED: _load_compiled}
"""Kernel set name -> a function that loads it (ImportError when its library is missing)."""

BACKENDS: dict[str, SimpleNamespace] = {REFERENCE: NUMPY}
"""The kernel sets loaded so far, by name."""

_FAILED: dict[str, str] = {}  # name -> why it could not be loaded
_state: dict[str, str | None] = {"active": None}  # the set float32 arrays run; None until first asked


def kernel_set(name: str) -> SimpleNamespace:
    """The kernel set ``name``, loaded on first use; ImportError when its library is missing."""
    if name not in BACKENDS:
        if name in _FAILED:
            raise ImportError(_FAILED[name])
        try:
            BACKENDS[name] = LOADERS[name]()
        except ImportError as err:
            _FAILED[name] = str(err)
            raise
    return BACKENDS[name]


def available(name: str) -> bool:
    """Whether the kernel set ``name`` can be loaded here."""
    try:
        kernel_set(name)
    except ImportError:
        return False
    return True


def kernel_path() -> str:
    """The name of the kernel set float32 arrays run now: ``"numba"`` or ``"numpy"``."""
    if _state["active"] is None:
        wanted = os.environ.get("NETTRAIN_FAST", "1").strip() not in ("0", "false", "no", "off")
        _state["active"] = COMPILED if wanted and available(COMPILED) else REFERENCE
    return _state["active"]


def use_kernels(name: str) -> str:
    """Run float32 arrays on the kernel set ``name`` from now on; returns the previous name.

    Raises ValueError for an unknown name, RuntimeError when its library is missing.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown kernel set {name!r}; known: {', '.join(LOADERS)}")
    try:
        kernel_set(name)
    except ImportError as err:
        raise RuntimeError(str(err)) from err
    previous = kernel_path()
    _state["active"] = name
    return previous


def backend(dtype=np.float32) -> SimpleNamespace:
    """The kernels to run for arrays of ``dtype``: the chosen set when written for it, else the reference."""
    ops = BACKENDS[kernel_path()]
    if ops.dtypes is None or np.dtype(dtype) in ops.dtypes:
        return ops
    return NUMPY


# -- the compiled kernels on or off ------------------------------------------------
def compiled_available() -> bool:
    """Whether numba is installed, so that the compiled kernels can run."""
    return available(COMPILED)


def compiled_enabled() -> bool:
    """Whether float32 arrays run the compiled kernels."""
    return kernel_path() == COMPILED


def set_compiled(flag: bool) -> bool:
    """Switch the compiled kernels on or off; returns the previous setting.

    Raises RuntimeError when asked to switch on without numba installed.
    """
    return use_kernels(COMPILED if flag else REFERENCE) == COMPILED
