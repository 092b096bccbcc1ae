"""The numba decorator every compiled kernel uses.

The kernels are serial and release the GIL: a convolution runs its batch chunks on a few
Python threads (see :func:`nettrain.kernels.pool.run_on_chunks`). numba's own parallel
loops were tried and dropped: next to the BLAS's threads their barriers collapse on a busy
machine. Compilation is cached on disk (``cache=True``), so only the first run on a
machine pays for it.
"""

from __future__ import annotations

from numba import njit

FAST_SUMS = {"reassoc", "contract"}  # let reductions vectorise; NaN and inf still propagate


def jit(fn=None, **options):
    """``numba.njit(cache=True, nogil=True, **options)``, usable with or without options."""
    if fn is None:
        return lambda f: jit(f, **options)
    return njit(cache=True, nogil=True, **options)(fn)
