"""The numerical kernels behind the layers: convolution, pooling, batch norm, ReLU, recurrent cells.

Two kernel sets have the same names and signatures: the NumPy reference kernels
(:mod:`.reference`, the definitions) and the numba ones (:mod:`.compiled`, the
``fast`` extra, tested against the reference). :mod:`.dispatch` chooses between them
by name; a layer asks :func:`backend` for the set that suits its arrays and hands it
to the GEMM drivers (:mod:`.gemm`), which run on the worker threads of :mod:`.pool`.

    pool.py       worker threads, NETTRAIN_THREADS, even splits, per-thread scratch
    geometry.py   ConvGeometry: the shape of a 2-D window op
    gemm.py       convolution by im2col/im2row + GEMM, threaded matrix products
    shifted.py    stride-1 convolution by one GEMM per kernel offset (the NumPy path)
    patches.py    convolution whose windows tile the image, one GEMM per sample (the NumPy path)
    reference/    the NumPy kernels (conv, pooling, batchnorm, activations, recurrent)
    compiled/     the numba kernels, imported only when asked for
    dispatch.py   kernel sets by name, the choice NETTRAIN_FAST and numba make

Only the names below are for the rest of nettrain; tests reach into the modules.
"""

from __future__ import annotations

from .dispatch import (NUMPY, backend, compiled_available, compiled_enabled, kernel_path, kernel_set, set_compiled,
                       use_kernels)
from .geometry import ConvGeometry, Pad4
from .gemm import (channels_last, conv2d_backward, conv2d_forward, conv2d_forward_from_rows, conv2d_forward_to_rows,
                   matmul, matmul_tn, matmul_tn_partials_bytes)
from .pool import blas, chunk_workers, even_ranges, inside_share, over_batch, run_on_chunks, scratch
from .reference.pooling import window_counts

__all__ = ["NUMPY", "ConvGeometry", "Pad4", "backend", "blas", "channels_last", "chunk_workers",
           "compiled_available", "compiled_enabled", "conv2d_backward", "conv2d_forward", "conv2d_forward_from_rows",
           "conv2d_forward_to_rows", "even_ranges", "inside_share", "kernel_path", "kernel_set", "matmul",
           "matmul_tn", "over_batch", "run_on_chunks", "scratch", "set_compiled", "use_kernels", "window_counts"]
