"""Pure-NumPy kernels: convolution by im2col/col2im, window pooling, batch normalisation.

These are the reference implementations; :mod:`nettrain.fast` compiles the
same kernels with numba and is tested against them. Every loop here runs over
kernel offsets (kh x kw) or over batch chunks, never over pixels: each offset
is one strided slice copied (im2col) or accumulated (col2im) at once.

A convolution runs over the batch in chunks of a few samples, so that the
column matrix of a chunk stays in cache between the copy that fills it and
the GEMM that reads it, and so that no layer keeps a full-batch column matrix
alive: backward recomputes the columns of each chunk from the layer's input.

Padding is given as four ints ``(top, bottom, left, right)`` so that Keras/TF
``same`` padding, which can be asymmetric, needs no special case.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

Pad4 = tuple[int, int, int, int]

# Bytes of column matrix per batch chunk: small enough to stay in L2/L3 between
# im2col and the GEMMs, large enough that each GEMM call is worth its overhead.
CHUNK_BYTES = int(os.environ.get("NETTRAIN_CHUNK_BYTES", 4 << 20))


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


def release_scratch() -> None:
    """Free every scratch buffer (they are recreated on demand)."""
    _SCRATCH.clear()


# -- threads ---------------------------------------------------------------------
# A convolution's batch chunks are independent, so they run on a small pool of
# threads, each doing im2col, its GEMMs and col2im on its own chunks with a
# single-threaded BLAS call. NumPy, the BLAS and the compiled kernels all release
# the GIL, so the copies run in parallel too, and no thread ever waits at a
# barrier inside a GEMM: on a busy machine that matters more than anything else.


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


def run_on_chunks(work, chunks: list[tuple[int, int]], workers: int) -> None:
    """Call ``work(worker_index, its_chunks)`` for ``workers`` interleaved shares of ``chunks``.

    The calling thread runs share 0 itself and the pool the others, with the BLAS
    single-threaded meanwhile (see above). Called from inside a share, it runs serially.
    """
    workers = max(1, min(workers, len(chunks)))
    if workers == 1 or getattr(_LOCAL, "busy", False):
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


# Below this many elements a kernel runs in the calling thread: handing work to the
# pool costs tens of microseconds.
PARALLEL_MIN_ELEMENTS = 1 << 16


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


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` (2-D), blocks of ``a``'s rows on the worker threads."""
    over_batch(lambda r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]), a.shape[0], a.shape[0] * b.shape[1])
    return out


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a.T @ b`` for tall ``a`` (M, K) and ``b`` (M, L): row blocks on the worker threads, then summed.

    The weight gradient of a layer applied at every position (recurrent, dense on sequences).
    """
    m = a.shape[0]
    # each thread adds a partial (K, L) sum: worth it for about 16 multiply-adds per element or more
    workers = split_workers(m, m * out.size // 16)
    if workers == 1:
        return np.matmul(a.T, b, out=out)
    parts = np.empty((workers, *out.shape), out.dtype)

    def work(k, share):
        for r0, r1 in share:
            np.matmul(a[r0:r1].T, b[r0:r1], out=parts[k])

    run_on_chunks(work, even_ranges(m, workers), workers)
    return np.sum(parts, axis=0, out=out)


# -- geometry --------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a 2-D window op except the batch size: input (C, H, W) to (OH, OW)."""

    in_chw: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: Pad4
    out_hw: tuple[int, int]

    @property
    def rows(self) -> int:
        """Rows of the column matrix: C * kh * kw."""
        return self.in_chw[0] * self.kernel[0] * self.kernel[1]

    @property
    def pixels(self) -> int:
        """Output pixels per sample and channel: OH * OW."""
        return self.out_hw[0] * self.out_hw[1]

    @property
    def padded_hw(self) -> tuple[int, int]:
        _, h, w = self.in_chw
        top, bottom, left, right = self.pad
        return h + top + bottom, w + left + right


def batch_chunks(n: int, bytes_per_sample: int, workers: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges over ``n`` samples, each about ``CHUNK_BYTES`` of work array.

    Their count is a multiple of ``workers`` and their sizes differ by one at most, so
    that every worker thread gets the same amount of work.
    """
    step = max(1, min(n, CHUNK_BYTES // max(bytes_per_sample, 1)))
    count = -(-n // step)
    return even_ranges(n, min(n, -(-count // workers) * workers))


# -- padding and windows ---------------------------------------------------------
def pad_images(x: np.ndarray, pad: Pad4, value: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H+top+bottom, W+left+right), filled with ``value``."""
    top, bottom, left, right = pad
    if not any(pad):
        return x
    n, c, h, w = x.shape
    if out is None:
        out = np.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    # only the border is filled, so ``out`` may be a scratch buffer
    out[:, :, :top] = value
    out[:, :, top + h :] = value
    out[:, :, top : top + h, :left] = value
    out[:, :, top : top + h, left + w :] = value
    out[:, :, top : top + h, left : left + w] = x
    return out


def unpad_images(xp: np.ndarray, pad: Pad4) -> np.ndarray:
    top, bottom, left, right = pad
    h, w = xp.shape[2] - top - bottom, xp.shape[3] - left - right
    return xp[:, :, top : top + h, left : left + w]


def window(xp: np.ndarray, i: int, j: int, stride, dilation, out_hw) -> np.ndarray:
    """The strided view of padded input ``xp`` seen by kernel offset (i, j): (N, C, OH, OW)."""
    sh, sw = stride
    dh, dw = dilation
    oh, ow = out_hw
    r, c = i * dh, j * dw
    return xp[:, :, r : r + sh * (oh - 1) + 1 : sh, c : c + sw * (ow - 1) + 1 : sw]


# -- convolution -----------------------------------------------------------------
def im2col(x: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) -> columns ``out`` (C*kh*kw, n*OH*OW), rows ordered (c, i, j).

    Column ``m * OH*OW + p`` holds the receptive field of output pixel ``p`` of
    sample ``m``, so a kernel reshaped to (F, C*kh*kw) times ``out`` is the
    convolution in one GEMM.
    """
    n, c = x.shape[:2]
    kh, kw = g.kernel
    xp = pad_images(x, g.pad, out=scratch("pad", (n, c, *g.padded_hw), x.dtype)) if any(g.pad) else x
    cols = out.reshape(c, kh, kw, n, *g.out_hw)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = window(xp, i, j, g.stride, g.dilation, g.out_hw).transpose(1, 0, 2, 3)
    return out


def col2im(cols: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Columns (C*kh*kw, n*OH*OW) -> image gradient ``out`` (n, C, H, W), summing overlaps."""
    n, c = out.shape[:2]
    kh, kw = g.kernel
    dxp = scratch("pad_grad", (n, c, *g.padded_hw), out.dtype) if any(g.pad) else out
    dxp[...] = 0
    cols6 = cols.reshape(c, kh, kw, n, *g.out_hw)
    for i in range(kh):
        for j in range(kw):
            window(dxp, i, j, g.stride, g.dilation, g.out_hw)[...] += cols6[:, i, j].transpose(1, 0, 2, 3)
    if dxp is not out:
        out[...] = unpad_images(dxp, g.pad)
    return out


def channels_major(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(n, F, P) -> (F, n*P): the GEMM layout of a chunk of NCHW feature maps."""
    n, f, p = y.shape
    out.reshape(f, n, p)[...] = y.transpose(1, 0, 2)
    return out


def samples_major(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """(F, n*P) GEMM output plus ``bias`` (F,) -> NCHW chunk ``out`` (n, F, P)."""
    n, f, p = out.shape
    z3 = z.reshape(f, n, p).transpose(1, 0, 2)
    if bias is None:
        out[...] = z3
    else:
        np.add(z3, bias.reshape(1, f, 1), out=out)
    return out


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops=None,
                   keep_cols: dict | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW): one GEMM (F, C*kh*kw) x (C*kh*kw, n*OH*OW) per batch chunk.

    With a ``keep_cols`` dict, each chunk's columns are kept there (keyed by its sample range)
    for :func:`conv2d_backward`, which then need not build them again; arrays already in it
    are written over.
    """
    ops = ops or NUMPY
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            shape = (g.rows, (n1 - n0) * g.pixels)
            if keep_cols is None:
                buf = scratch("cols", shape, x.dtype)
            else:  # the caller's arrays from the last step are reused: fresh pages cost a fault each
                buf = keep_cols.get((n0, n1))
                if buf is None or buf.shape != shape or buf.dtype != x.dtype:
                    buf = np.empty(shape, x.dtype)
            cols = ops.im2col(x[n0:n1], g, buf)
            if keep_cols is not None:
                keep_cols[(n0, n1)] = cols
            z = np.matmul(w2, cols, out=scratch("gemm", (f, (n1 - n0) * g.pixels), x.dtype))
            ops.samples_major(z, bias, y[n0:n1])

    workers = chunk_workers()
    chunks = batch_chunks(n, g.rows * g.pixels * x.itemsize, workers)
    if keep_cols is not None and keep_cols.keys() != set(chunks):
        keep_cols.clear()  # another batch size or thread count: other chunks
    run_on_chunks(work, chunks, workers)
    return y.reshape(n, f, *g.out_hw)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops=None,
    need_dx: bool = True, kept_cols: dict | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None.

    Per chunk: the columns (kept by the forward pass, else built again), dW += dY cols^T,
    then (if ``need_dx``) dcols = W^T dY, col2im.
    """
    kept_cols = kept_cols or {}
    ops = ops or NUMPY
    n, f = x.shape[0], kernel.shape[0]
    w2t = kernel.reshape(f, -1).T
    dx = np.empty_like(x) if need_dx else None
    dy3 = dy.reshape(n, f, g.pixels)
    workers = chunk_workers()
    dws = np.zeros((workers, f, g.rows), dtype=x.dtype)  # one partial sum per worker
    dbs = np.zeros((workers, f), dtype=x.dtype)

    def work(k, chunks):
        part = np.empty((f, g.rows), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * g.pixels
            cols = kept_cols.get((n0, n1))
            if cols is None:
                cols = ops.im2col(x[n0:n1], g, scratch("cols", (g.rows, m), x.dtype))
            dz = ops.channels_major(dy3[n0:n1], scratch("gemm", (f, m), x.dtype))
            dws[k] += np.matmul(dz, cols.T, out=part)
            if with_bias:
                dbs[k] += dz.sum(axis=1)
            if need_dx:
                dcols = np.matmul(w2t, dz, out=cols)
                ops.col2im(dcols, g, dx[n0:n1])

    run_on_chunks(work, batch_chunks(n, g.rows * g.pixels * x.itemsize, workers), workers)
    return dx, dws.sum(axis=0).reshape(kernel.shape), dbs.sum(axis=0) if with_bias else None


# -- pooling ---------------------------------------------------------------------
# Pooling windows are a few cells wide, so NumPy would run its inner loops over a
# handful of elements. The reference kernels therefore move the images to the last
# axis first, (N, C, H, W) -> (H, W, N*C): every window op then runs over N*C
# contiguous values, and the two transposing copies cost less than they save.


def images_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> contiguous (H, W, N*C)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n * c, h, w).transpose(1, 2, 0))


def images_first(t: np.ndarray, n: int, c: int) -> np.ndarray:
    """(H, W, N*C) -> contiguous (N, C, H, W)."""
    h, w, _ = t.shape
    return np.ascontiguousarray(t.transpose(2, 0, 1)).reshape(n, c, h, w)


def pad_last(t: np.ndarray, pad: Pad4, value: float = 0.0) -> np.ndarray:
    """(H, W, M) -> (H+top+bottom, W+left+right, M), the border filled with ``value``."""
    if not any(pad):
        return t
    top, bottom, left, right = pad
    h, w, m = t.shape
    out = np.full((h + top + bottom, w + left + right, m), value, dtype=t.dtype)
    out[top : top + h, left : left + w] = t
    return out


def window_last(tp: np.ndarray, i: int, j: int, stride, out_hw) -> np.ndarray:
    """The (OH, OW, M) view of padded ``tp`` (Hp, Wp, M) seen by window offset (i, j)."""
    sh, sw = stride
    oh, ow = out_hw
    return tp[i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def unpad_last(tp: np.ndarray, pad: Pad4) -> np.ndarray:
    top, bottom, left, right = pad
    return tp[top : tp.shape[0] - bottom, left : tp.shape[1] - right]


def argmax_dtype(g: ConvGeometry) -> type:
    """The smallest integer type that holds a window offset i*pw + j (and -1)."""
    return np.int8 if g.kernel[0] * g.kernel[1] < 128 else np.int32


def max_pool_forward(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (max (N, C, OH, OW), argmax offset i*pw + j (N, C, OH, OW) as int8/int32).

    Padding counts as -inf, so it never wins; ties go to the first offset in
    row-major order, as in PyTorch.
    """
    n, c = x.shape[:2]
    ph, pw = g.kernel
    tp = pad_last(images_last(x), g.pad, -np.inf)
    best = window_last(tp, 0, 0, g.stride, g.out_hw).copy()
    arg = np.zeros(best.shape, dtype=argmax_dtype(g))
    better = np.empty(best.shape, dtype=bool)
    offset = np.empty_like(arg)
    for i in range(ph):
        for j in range(pw):
            if i == j == 0:
                continue
            cand = window_last(tp, i, j, g.stride, g.out_hw)
            np.greater(cand, best, out=better)
            np.maximum(best, cand, out=best)
            # offsets come in increasing order, so "k where better, else the old arg" is a max
            np.multiply(better, i * pw + j, out=offset)
            np.maximum(arg, offset, out=arg)
    return images_first(best, n, c), images_first(arg, n, c)


def max_pool_backward(dy: np.ndarray, arg: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Route each output gradient to the input position that won the max: -> (N, C, H, W)."""
    n, c = dy.shape[:2]
    ph, pw = g.kernel
    dyt, argt = images_last(dy), images_last(arg)
    dxp = np.zeros((*g.padded_hw, n * c), dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            window_last(dxp, i, j, g.stride, g.out_hw)[...] += dyt * (argt == i * pw + j)
    return images_first(unpad_last(dxp, g.pad), n, c)


def avg_pool_forward(x: np.ndarray, g: ConvGeometry, inv_count: np.ndarray) -> np.ndarray:
    """Window means (N, C, H, W) -> (N, C, OH, OW); ``inv_count`` (OH, OW) is 1 / cells inside the image."""
    n, c = x.shape[:2]
    ph, pw = g.kernel
    tp = pad_last(images_last(x), g.pad)
    total = window_last(tp, 0, 0, g.stride, g.out_hw).copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                total += window_last(tp, i, j, g.stride, g.out_hw)
    total *= inv_count[:, :, None]
    return images_first(total, n, c)


def avg_pool_backward(dy: np.ndarray, g: ConvGeometry, inv_count: np.ndarray) -> np.ndarray:
    """Spread each output gradient evenly over the cells its window covered: -> (N, C, H, W)."""
    n, c = dy.shape[:2]
    ph, pw = g.kernel
    share = images_last(dy)
    share *= inv_count[:, :, None]
    dxp = np.zeros((*g.padded_hw, n * c), dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            window_last(dxp, i, j, g.stride, g.out_hw)[...] += share
    return images_first(unpad_last(dxp, g.pad), n, c)


def window_counts(g: ConvGeometry) -> np.ndarray:
    """(OH, OW): how many cells of each pooling window lie inside the (unpadded) image."""
    _, h, w = g.in_chw
    ones = pad_images(np.ones((1, 1, h, w)), g.pad)
    total = np.zeros((1, 1, *g.out_hw))
    for i in range(g.kernel[0]):
        for j in range(g.kernel[1]):
            total += window(ones, i, j, g.stride, (1, 1), g.out_hw)
    return total[0, 0]


# -- batch normalisation ---------------------------------------------------------
# Arrays arrive as (M, F, P): M samples, F features, P positions sharing a
# feature's statistics (P = H*W for images, 1 for vectors; a (N, T, F) sequence
# is (N*T, F, 1)). Statistics reduce over axes 0 and 2.


def batchnorm_stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, F, P) -> per-feature mean and biased variance (F,), in x's dtype."""
    m = x3.shape[0] * x3.shape[2]
    mean = np.einsum("mfp->f", x3) / x3.dtype.type(m)
    xc = x3 - mean.reshape(1, -1, 1)
    var = np.einsum("mfp,mfp->f", xc, xc) / x3.dtype.type(m)
    return mean, var


def batchnorm_affine(x3: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """y = x * scale + shift per feature: (M, F, P) -> (M, F, P)."""
    y = x3 * scale.reshape(1, -1, 1)
    y += shift.reshape(1, -1, 1)
    return y


def batchnorm_backward(
    x3: np.ndarray, dy3: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode gradients: -> dx (M, F, P), dgamma (F,), dbeta (F,).

    Closed form with xhat = (x - mean) * inv_std:
    dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)).
    """
    m = x3.dtype.type(x3.shape[0] * x3.shape[2])
    xc = x3 - mean.reshape(1, -1, 1)
    dbeta = np.einsum("mfp->f", dy3)
    dy_xc = np.einsum("mfp,mfp->f", dy3, xc)
    dgamma = dy_xc * inv_std
    a = gamma * inv_std
    b = -a * inv_std * inv_std * dy_xc / m
    c = -a * dbeta / m
    dx = dy3 * a.reshape(1, -1, 1)
    xc *= b.reshape(1, -1, 1)
    dx += xc
    dx += c.reshape(1, -1, 1)
    return dx, dgamma, dbeta


# -- activations -----------------------------------------------------------------
def relu_forward(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype)


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy * (y > 0): the gradient where the output was positive, else 0 (NaN in dy stays NaN)."""
    return np.multiply(dy, y > 0, dtype=dy.dtype)


# -- recurrent cells -------------------------------------------------------------
# One timestep of a recurrent layer, after its GEMMs: the layer computes the input
# projection of all steps at once (``gates``, one (N, G*U) slice per step) and the
# recurrent projection ``hr = h_{t-1} R`` of each step with BLAS; a cell kernel then
# does every element-wise operation of the step. Gate blocks follow PyTorch's order
# along the last axis. Work arrays come from :func:`scratch`, so that a step
# allocates nothing.


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """``a = sigmoid(a)`` in place, as 0.5 * (tanh(a / 2) + 1): that form never overflows."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1
    a *= 0.5
    return a


def gate_blocks(a: np.ndarray, count: int) -> list[np.ndarray]:
    """Views of the ``count`` gate blocks of a fused (N, count*U) array."""
    u = a.shape[-1] // count
    return [a[..., k * u : (k + 1) * u] for k in range(count)]


# Gate slices of a fused (N, G*U) array are strided, and NumPy runs element-wise ops
# on them several times slower than on contiguous arrays, slowest when both input and
# output are strided. So the LSTM kernels activate and differentiate all four gates in
# whole-array passes, with per-column constants that make one formula serve both
# sigmoid and tanh gates, and the GRU kernels compute each gate in a contiguous work
# array and copy it into place once.
LSTM_TANH_GATES = (False, False, True, False)  # i, f, g, o
_GATE_CONSTANTS: dict[tuple, tuple[np.ndarray, ...]] = {}


def gate_constants(tanh_gates: tuple[bool, ...], u: int, dtype) -> tuple[np.ndarray, ...]:
    """Per-column (G*U,) vectors ``scale``, ``shift``, ``top``, ``base`` for gates whose
    activation is tanh where ``tanh_gates`` is True and sigmoid elsewhere.

    ``scale * tanh(scale * a) + shift`` is sigmoid(a) = 0.5 * tanh(a / 2) + 0.5 on the
    sigmoid gates and tanh(a) on the others; ``base - y * (y - top)`` is the derivative
    y * (1 - y) of a sigmoid output y and 1 - y^2 of a tanh output.
    """
    key = (tanh_gates, u, np.dtype(dtype))
    if key not in _GATE_CONSTANTS:
        is_tanh = np.repeat(np.array(tanh_gates), u)
        vectors = tuple(np.where(is_tanh, on_tanh, on_sigmoid).astype(dtype)
                        for on_tanh, on_sigmoid in ((1, 0.5), (0, 0.5), (0, 1), (1, 0)))
        for v in vectors:
            v.flags.writeable = False
        _GATE_CONSTANTS[key] = vectors
    return _GATE_CONSTANTS[key]


def activation_slopes(acts: np.ndarray, tanh_gates: tuple[bool, ...]) -> np.ndarray:
    """(N, G*U) activated gates -> a work array of their activations' derivatives."""
    _, _, top, base = gate_constants(tanh_gates, acts.shape[1] // len(tanh_gates), acts.dtype)
    slope = scratch("recurrent_slope", acts.shape, acts.dtype)
    np.subtract(acts, top, out=slope)
    slope *= acts
    np.subtract(base, slope, out=slope)
    return slope


def rnn_cell_forward(gates: np.ndarray, hr: np.ndarray, h: np.ndarray) -> None:
    """SimpleRNN step: ``h = tanh(gates + hr)``, all (N, U); ``gates`` is x_t K + b."""
    np.add(gates, hr, out=h)
    np.tanh(h, out=h)


def rnn_cell_backward(dy: np.ndarray, dh: np.ndarray, h: np.ndarray, da: np.ndarray) -> None:
    """SimpleRNN step backward: ``da = (dy + dh) * (1 - h^2)``, all (N, U).

    ``dy`` is the gradient of h_t from the layer's output, ``dh`` the one from step t+1
    (``da_{t+1} R^T``), ``h`` is h_t and ``da`` receives the gradient of the pre-activation.
    """
    w = scratch("recurrent_w", h.shape, h.dtype)
    np.multiply(h, h, out=w)
    np.subtract(1, w, out=w)
    np.add(dy, dh, out=da)
    da *= w


def lstm_cell_forward(
    gates: np.ndarray, hr: np.ndarray, c_prev: np.ndarray, c: np.ndarray, tanh_c: np.ndarray, h: np.ndarray
) -> None:
    """LSTM step. ``gates`` (N, 4U): x_t K + b in, the activated gates i, f, g, o out.

    ``hr`` (N, 4U) is h_{t-1} R; from ``c_prev`` (N, U) it writes the cell state
    ``c = f * c_prev + i * g``, ``tanh_c = tanh(c)`` and ``h = o * tanh_c`` (all (N, U)).
    """
    scale, shift, _, _ = gate_constants(LSTM_TANH_GATES, c.shape[1], gates.dtype)
    gates += hr
    gates *= scale
    np.tanh(gates, out=gates)
    gates *= scale
    gates += shift
    i, f, g, o = gate_blocks(gates, 4)
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tanh_c)  # tanh_c is free until the end of the step
    c += tanh_c
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def lstm_cell_backward(
    dy: np.ndarray, dh: np.ndarray, acts: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray,
    dc: np.ndarray, da: np.ndarray,
) -> None:
    """LSTM step backward. ``dy`` + ``dh`` (N, U) is the gradient of h_t (from the output and
    from step t+1); ``acts`` (N, 4U) the gates, ``c_prev`` c_{t-1} and ``tanh_c`` tanh(c_t).

    ``dc`` (N, U) holds dL/dc_t from step t+1 on entry and dL/dc_{t-1} on return;
    ``da`` (N, 4U) receives the gradients of the four pre-activations: the gradients
    of the activated gates (dc * g, dc * c_prev, dc * i, dh * tanh_c) times the
    derivatives of their activations.
    """
    i, f, g, o = gate_blocks(acts, 4)
    da_i, da_f, da_g, da_o = gate_blocks(da, 4)
    total = np.add(dy, dh, out=scratch("recurrent_dh", dc.shape, dc.dtype))
    w = scratch("recurrent_w", dc.shape, dc.dtype)
    np.multiply(total, tanh_c, out=da_o)
    total *= o
    np.multiply(tanh_c, tanh_c, out=w)
    np.subtract(1, w, out=w)
    total *= w
    dc += total
    np.multiply(dc, g, out=da_i)
    np.multiply(dc, c_prev, out=da_f)
    np.multiply(dc, i, out=da_g)
    da *= activation_slopes(acts, LSTM_TANH_GATES)
    dc *= f


def gru_cell_forward(
    gates: np.ndarray, hr: np.ndarray, recurrent_bias: np.ndarray, h_prev: np.ndarray, hw_n: np.ndarray,
    h: np.ndarray,
) -> None:
    """GRU step (PyTorch's). ``gates`` (N, 3U): x_t K + b in, the activated r, z, n out.

    With ``hr`` (N, 3U) = h_{t-1} R and ``recurrent_bias`` c (3U,):
    r, z = sigmoid(gates_rz + (hr_rz + c_rz)); ``hw_n`` (N, U) = hr_n + c_n;
    n = tanh(gates_n + r * hw_n); ``h`` (N, U) = n + z * (h_prev - n).
    Each gate is computed in a contiguous work array and copied into ``gates`` once.
    """
    blocks = gate_blocks(gates, 3)
    rec, bias = gate_blocks(hr, 3), gate_blocks(recurrent_bias, 3)
    r, z, n = (scratch(f"recurrent_gate{k}", h.shape, h.dtype) for k in range(3))
    for k, a in ((0, r), (1, z)):
        np.add(rec[k], bias[k], out=a)
        np.add(blocks[k], a, out=a)
        sigmoid_(a)
        blocks[k][...] = a
    np.add(rec[2], bias[2], out=hw_n)
    np.multiply(r, hw_n, out=n)
    n += blocks[2]
    np.tanh(n, out=n)
    blocks[2][...] = n
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n


def gru_cell_backward(
    dy: np.ndarray, dh: np.ndarray, dh_carry: np.ndarray, h_prev: np.ndarray, acts: np.ndarray,
    hw_n: np.ndarray, dxw: np.ndarray, dhw: np.ndarray,
) -> None:
    """GRU step backward. The gradient of h_t is ``dy + dh + dh_carry`` (N, U): from the
    output, through R from step t+1, and straight through z from step t+1.

    ``acts`` (N, 3U) holds r, z, n and ``hw_n`` (N, U) h_{t-1} R_n + c_n. Writes ``dxw``
    (N, 3U), the gradients of the input projection, ``dhw`` (N, 3U), those of the hidden
    projection (its n block scaled by r), and ``dh_carry = dh_t * z`` for step t-1.
    """
    u = h_prev.shape[1]
    r, z, n = gate_blocks(acts, 3)
    dr, dz, dn = gate_blocks(dxw, 3)
    total = np.add(dy, dh, out=scratch("recurrent_dh", h_prev.shape, h_prev.dtype))
    total += dh_carry
    d, w, v = (scratch(f"recurrent_gate{k}", h_prev.shape, h_prev.dtype) for k in range(3))
    # dn = dh * (1 - z) * (1 - n^2), kept contiguous in d for dr and dhw
    np.subtract(1, z, out=d)
    d *= total
    np.multiply(n, n, out=w)
    np.subtract(1, w, out=w)
    d *= w
    dn[...] = d
    np.multiply(d, r, out=dhw[:, 2 * u :])
    # dz = dh * (h_prev - n) * z * (1 - z)
    np.subtract(h_prev, n, out=w)
    w *= total
    w *= z
    np.subtract(1, z, out=v)
    np.multiply(w, v, out=dz)
    # dr = dn * hw_n * r * (1 - r)
    np.multiply(d, hw_n, out=w)
    w *= r
    np.subtract(1, r, out=v)
    np.multiply(w, v, out=dr)
    dhw[:, : 2 * u] = dxw[:, : 2 * u]
    np.multiply(total, z, out=dh_carry)


# -- the reference kernels on the worker threads ------------------------------------
# NumPy releases the GIL inside its loops, so the reference kernels, run on disjoint
# ranges of samples (or channels), use every worker thread too. The plain functions
# above stay the definitions; these wrappers only split the work.


def split_samples(fn, outputs: tuple, batched: tuple, shared: tuple = ()):
    """``outputs[k][s0:s1] = fn(*(a[s0:s1] for a in batched), *shared)[k]`` over sample ranges on the threads."""

    def work(s0, s1):
        result = fn(*(a[s0:s1] for a in batched), *shared)
        for out, part in zip(outputs, result if isinstance(result, tuple) else (result,)):
            out[s0:s1] = part

    over_batch(work, batched[0].shape[0], batched[0].size)
    return outputs if len(outputs) > 1 else outputs[0]


def threaded_max_pool_forward(x, g):
    y = np.empty((x.shape[0], x.shape[1], *g.out_hw), x.dtype)
    arg = np.empty(y.shape, argmax_dtype(g))
    return split_samples(max_pool_forward, (y, arg), (x,), (g,))


def threaded_max_pool_backward(dy, arg, g):
    return split_samples(max_pool_backward, (np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype),), (dy, arg), (g,))


def threaded_avg_pool_forward(x, g, inv_count):
    return split_samples(avg_pool_forward, (np.empty((*x.shape[:2], *g.out_hw), x.dtype),), (x,), (g, inv_count))


def threaded_avg_pool_backward(dy, g, inv_count):
    dx = np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype)
    return split_samples(avg_pool_backward, (dx,), (dy,), (g, inv_count))


def threaded_batchnorm_stats(x3):
    f = x3.shape[1]
    mean, var = np.empty(f, x3.dtype), np.empty(f, x3.dtype)

    def work(k0, k1):
        mean[k0:k1], var[k0:k1] = batchnorm_stats(x3[:, k0:k1])

    over_batch(work, f, x3.size)
    return mean, var


def threaded_batchnorm_affine(x3, scale, shift):
    return split_samples(batchnorm_affine, (np.empty(x3.shape, x3.dtype),), (x3,), (scale, shift))


def threaded_batchnorm_backward(x3, dy3, mean, inv_std, gamma):
    f = x3.shape[1]
    dx3 = np.empty(x3.shape, x3.dtype)
    dgamma, dbeta = np.empty(f, x3.dtype), np.empty(f, x3.dtype)

    def work(k0, k1):
        part = batchnorm_backward(x3[:, k0:k1], dy3[:, k0:k1], mean[k0:k1], inv_std[k0:k1], gamma[k0:k1])
        dx3[:, k0:k1], dgamma[k0:k1], dbeta[k0:k1] = part

    over_batch(work, f, x3.size)
    return dx3, dgamma, dbeta


def threaded_relu_forward(x):
    if x.ndim == 0:
        return relu_forward(x)
    return split_samples(relu_forward, (np.empty(x.shape, x.dtype),), (x,))


def threaded_relu_backward(dy, y):
    if dy.ndim == 0:
        return relu_backward(dy, y)
    return split_samples(relu_backward, (np.empty(dy.shape, dy.dtype),), (dy, y))


KERNEL_NAMES = (
    "im2col",
    "col2im",
    "channels_major",
    "samples_major",
    "max_pool_forward",
    "max_pool_backward",
    "avg_pool_forward",
    "avg_pool_backward",
    "batchnorm_stats",
    "batchnorm_affine",
    "batchnorm_backward",
    "relu_forward",
    "relu_backward",
    "rnn_cell_forward",
    "rnn_cell_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "gru_cell_forward",
    "gru_cell_backward",
)
"""What every kernel namespace provides (:data:`NUMPY` here, :data:`nettrain.fast.NUMBA`)."""

NUMPY = SimpleNamespace(name="numpy", **{k: globals().get(f"threaded_{k}", globals()[k]) for k in KERNEL_NAMES})
"""The reference kernels as one namespace; :data:`nettrain.fast.NUMBA` has the same names."""


def backend(dtype=np.float32):
    """The kernels to run for arrays of ``dtype``: the compiled ones when active (float32 only)."""
    from . import fast

    if np.dtype(dtype) == np.float32 and fast.enabled():
        return fast.NUMBA
    return NUMPY
