"""The worker threads that every kernel shares, the even splits they run, and per-thread scratch memory.

A convolution's batch chunks are independent, so they run on a small pool of
threads, each doing im2col, its GEMMs and col2im on its own chunks with a
single-threaded BLAS call. NumPy, the BLAS and the compiled kernels all release
the GIL, so the copies run in parallel too, and no thread ever waits at a
barrier inside a GEMM: on a busy machine that matters more than anything else.

``NETTRAIN_THREADS`` sets the number of threads (default: one per available core);
``NETTRAIN_CHUNK_BYTES`` the size of a convolution's batch chunks.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Bytes of column matrix per batch chunk: small enough to stay in L2/L3 between
# im2col and the GEMMs, large enough that each GEMM call is worth its overhead.
CHUNK_BYTES = int(os.environ.get("NETTRAIN_CHUNK_BYTES", 4 << 20))

# Below this many elements a kernel runs in the calling thread: handing work to the
# pool costs tens of microseconds.
PARALLEL_MIN_ELEMENTS = 1 << 16


# -- scratch buffers -------------------------------------------------------------
_SCRATCH: dict[tuple[int, str, np.dtype], np.ndarray] = {}


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable uninitialised work array; the same ``name`` hands out the same memory.

    Callers must be done with one ``scratch(name, ...)`` array before asking for
    ``name`` again. Each thread has its own buffers, and a buffer only ever grows,
    so steady-state training allocates nothing.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    key = (threading.get_ident(), name, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = _SCRATCH[key] = np.empty(max(size, 1), dtype)
    return buf[:size].reshape(shape)


# -- the BLAS's own threads --------------------------------------------------------
class BlasThreads:
    """Reads and sets the thread count of the OpenBLAS that NumPy loaded (Linux; else inert)."""

    SYMBOLS = ("openblas_{}_num_threads", "openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads64_",
               "scipy_openblas_{}_num_threads")

    def __init__(self):
        self._get = self._set = None
        try:
            import ctypes

            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
            for path in sorted(paths):
                lib = ctypes.CDLL(path)
                for pattern in self.SYMBOLS:
                    if hasattr(lib, pattern.format("get")) and hasattr(lib, pattern.format("set")):
                        self._get, self._set = getattr(lib, pattern.format("get")), getattr(lib, pattern.format("set"))
                        self._get.restype = ctypes.c_int
                        self._set.argtypes = [ctypes.c_int64 if "64" in pattern else ctypes.c_int]
                        return
        except (OSError, AttributeError):
            pass

    @property
    def controllable(self) -> bool:
        return self._get is not None

    def get(self) -> int:
        return int(self._get()) if self._get is not None else 1

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(n)


_BLAS: BlasThreads | None = None
_POOL: dict[int, ThreadPoolExecutor] = {}


def blas() -> BlasThreads:
    global _BLAS
    if _BLAS is None:
        _BLAS = BlasThreads()
    return _BLAS


# -- the pool --------------------------------------------------------------------
def available_cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def chunk_workers() -> int:
    """Threads for batch chunks: ``NETTRAIN_THREADS`` when set, else one per available core."""
    forced = os.environ.get("NETTRAIN_THREADS", "").strip()
    if forced.isdigit() and int(forced) > 0:
        return int(forced)
    return available_cores()


_LOCAL = threading.local()  # .busy: this thread is running a share already


def _share(work, k, share):
    _LOCAL.busy = True
    try:
        work(k, share)
    finally:
        _LOCAL.busy = False


def inside_share() -> bool:
    """Whether the calling thread is running a share of :func:`run_on_chunks` (its own splits run serially)."""
    return getattr(_LOCAL, "busy", False)


def run_on_chunks(work, chunks: list[tuple[int, int]], workers: int) -> None:
    """Call ``work(worker_index, its_chunks)`` for ``workers`` interleaved shares of ``chunks``.

    The calling thread runs share 0 itself and the pool the others, with the BLAS
    single-threaded meanwhile (see above). Called from inside a share, it runs serially.
    """
    workers = max(1, min(workers, len(chunks)))
    if workers == 1 or inside_share():
        work(0, chunks)
        return
    b = blas()
    before = b.get()
    pool = _POOL.get(workers - 1)
    if pool is None:
        pool = _POOL[workers - 1] = ThreadPoolExecutor(workers - 1, thread_name_prefix="nettrain-chunks")
    if before != 1:
        b.set(1)
    try:
        futures = [pool.submit(_share, work, k, chunks[k::workers]) for k in range(1, workers)]
        try:
            _share(work, 0, chunks[0::workers])
        finally:
            for future in futures:  # every share ends before the arrays they write are handed on
                future.result()
    finally:
        if before != 1:
            b.set(before)


if hasattr(os, "register_at_fork"):  # a forked child has none of the pool's threads
    os.register_at_fork(after_in_child=_POOL.clear)


# -- even splits -----------------------------------------------------------------
def even_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ``(start, stop)`` ranges covering ``range(n)``, sizes differing by one at most."""
    return [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def split_workers(n: int, elements: int) -> int:
    """Worker threads for a job of ``n`` separable items and ``elements`` in all: 1 when too small to split."""
    return max(1, min(chunk_workers(), n)) if elements >= PARALLEL_MIN_ELEMENTS else 1


def over_batch(work, n: int, elements: int) -> None:
    """Call ``work(start, stop)`` on about equal ranges of ``n`` items, one per worker thread.

    For kernels that release the GIL and write disjoint slices; ``elements`` (the size
    of the job) decides whether splitting is worth it.
    """
    workers = split_workers(n, elements)
    run_on_chunks(lambda _, share: [work(a, b) for a, b in share], even_ranges(n, workers), workers)


def split_samples(fn, outputs: tuple, batched: tuple, shared: tuple = ()):
    """``fn(*(a[s0:s1] for a in batched), *shared, out=...)`` over sample ranges on the worker threads.

    Runs a kernel written for a whole batch on the worker threads, one range of samples
    each; ``fn`` writes its results into the slices ``out`` of ``outputs`` (a tuple of
    them when there are several), so no range is copied twice.
    """

    def work(s0, s1):
        parts = tuple(out[s0:s1] for out in outputs)
        fn(*(a[s0:s1] for a in batched), *shared, out=parts if len(parts) > 1 else parts[0])

    over_batch(work, batched[0].shape[0], batched[0].size)
    return outputs if len(outputs) > 1 else outputs[0]


def batch_chunks(n: int, bytes_per_sample: int, workers: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges over ``n`` samples, each about ``CHUNK_BYTES`` of work array.

    Their count is a multiple of ``workers`` and their sizes differ by one at most, so
    that every worker thread gets the same amount of work.
    """
    step = max(1, min(n, CHUNK_BYTES // max(bytes_per_sample, 1)))
    count = -(-n // step)
    return even_ranges(n, min(n, -(-count // workers) * workers))
