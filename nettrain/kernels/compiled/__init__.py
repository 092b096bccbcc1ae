"""The numba kernels (the ``fast`` extra), with the names and signatures of the NumPy reference kernels.

Importing this package imports numba, and fails with ImportError without it:
:mod:`nettrain.kernels.dispatch` imports it only when the compiled kernels are asked
for. They run for float32 arrays; float64 (gradient checks) runs the reference kernels.

The kernels move data; GEMMs stay in NumPy's BLAS. Each module lists its kernels in
``__all__``; :data:`KERNELS` collects them, and a kernel that no module provides is
taken from the reference set.
"""

from __future__ import annotations

from . import activations, batchnorm, conv, optim, pooling, recurrent

DTYPES = ("float32",)
"""The array types the compiled kernels are written for."""

CONV_LAYOUT = "rows"
"""Convolutions run their GEMMs channels last here: the compiled im2row copies well (NumPy's does not)."""

KERNELS = {name: getattr(module, name) for module in (conv, pooling, batchnorm, activations, recurrent, optim)
           for name in module.__all__ if hasattr(module, name)}
"""Kernel name -> compiled function."""
