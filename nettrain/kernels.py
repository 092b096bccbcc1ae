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
from typing import Iterator

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


def run_on_chunks(work, chunks: list[tuple[int, int]], workers: int) -> None:
    """Call ``work(worker_index, its_chunks)`` for ``workers`` interleaved shares of ``chunks``.

    With more than one worker the BLAS is single-threaded meanwhile (see above).
    """
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
        work(0, chunks)
        return
    b = blas()
    before = b.get()
    pool = _POOL.get(workers)
    if pool is None:
        pool = _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="nettrain-chunks")
    b.set(1)
    try:
        for future in [pool.submit(work, k, chunks[k::workers]) for k in range(workers)]:
            future.result()
    finally:
        b.set(before)


# Below this many elements a kernel runs in the calling thread: handing work to the
# pool costs tens of microseconds.
PARALLEL_MIN_ELEMENTS = 1 << 16


def over_batch(work, n: int, elements: int) -> None:
    """Call ``work(start, stop)`` on about equal ranges of ``n`` items, one per worker thread.

    For kernels that release the GIL and write disjoint slices; ``elements`` (the size
    of the job) decides whether splitting is worth it.
    """
    workers = max(1, min(chunk_workers(), n)) if elements >= PARALLEL_MIN_ELEMENTS else 1
    bounds = [(n * k // workers, n * (k + 1) // workers) for k in range(workers)]
    run_on_chunks(lambda _, share: [work(a, b) for a, b in share], bounds, workers)


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


def batch_chunks(n: int, bytes_per_sample: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges over ``n`` samples, each about ``CHUNK_BYTES`` of work array."""
    step = max(1, min(n, CHUNK_BYTES // max(bytes_per_sample, 1)))
    for start in range(0, n, step):
        yield start, min(start + step, n)


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


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops=None) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW): one GEMM (F, C*kh*kw) x (C*kh*kw, n*OH*OW) per batch chunk."""
    ops = ops or NUMPY
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            cols = ops.im2col(x[n0:n1], g, scratch("cols", (g.rows, (n1 - n0) * g.pixels), x.dtype))
            z = np.matmul(w2, cols, out=scratch("gemm", (f, (n1 - n0) * g.pixels), x.dtype))
            ops.samples_major(z, bias, y[n0:n1])

    run_on_chunks(work, list(batch_chunks(n, g.rows * g.pixels * x.itemsize)), chunk_workers())
    return y.reshape(n, f, *g.out_hw)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops=None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None.

    Per chunk: recompute the columns, dW += dY cols^T, then (if ``need_dx``) dcols = W^T dY, col2im.
    """
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
            cols = ops.im2col(x[n0:n1], g, scratch("cols", (g.rows, m), x.dtype))
            dz = ops.channels_major(dy3[n0:n1], scratch("gemm", (f, m), x.dtype))
            dws[k] += np.matmul(dz, cols.T, out=part)
            if with_bias:
                dbs[k] += dz.sum(axis=1)
            if need_dx:
                dcols = np.matmul(w2t, dz, out=cols)
                ops.col2im(dcols, g, dx[n0:n1])

    run_on_chunks(work, list(batch_chunks(n, g.rows * g.pixels * x.itemsize)), workers)
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


def max_pool_forward(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (max (N, C, OH, OW), argmax offset i*pw + j (N, C, OH, OW) as int8/int32).

    Padding counts as -inf, so it never wins; ties go to the first offset in
    row-major order, as in PyTorch.
    """
    n, c = x.shape[:2]
    ph, pw = g.kernel
    tp = pad_last(images_last(x), g.pad, -np.inf)
    best = window_last(tp, 0, 0, g.stride, g.out_hw).copy()
    arg = np.zeros(best.shape, dtype=np.int8 if ph * pw < 128 else np.int32)
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


NUMPY = SimpleNamespace(
    name="numpy",
    im2col=im2col,
    col2im=col2im,
    channels_major=channels_major,
    samples_major=samples_major,
    max_pool_forward=max_pool_forward,
    max_pool_backward=max_pool_backward,
    avg_pool_forward=avg_pool_forward,
    avg_pool_backward=avg_pool_backward,
    batchnorm_stats=batchnorm_stats,
    batchnorm_affine=batchnorm_affine,
    batchnorm_backward=batchnorm_backward,
    relu_forward=relu_forward,
    relu_backward=relu_backward,
)
"""The reference kernels as one namespace; :data:`nettrain.fast.NUMBA` has the same names."""


def backend(dtype=np.float32):
    """The kernels to run for arrays of ``dtype``: the compiled ones when active (float32 only)."""
    from . import fast

    if np.dtype(dtype) == np.float32 and fast.enabled():
        return fast.NUMBA
    return NUMPY
