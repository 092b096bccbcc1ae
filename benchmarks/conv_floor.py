"""How far the GEMMs alone put ResNet-20's convolutions from PyTorch's.

For each convolution shape of ResNet-20 (batch 128, float32) this times, side by side in one
process and thread count:

- nettrain's whole convolution, forward and backward (input and kernel gradients), with the
  kernel set that runs (numba where installed);
- the GEMMs of that convolution alone, on the same batch chunks, channels last as the compiled
  path runs them ((pixels, C*3*3) x (C*3*3, F)), with their operands already in place: the
  forward product, the kernel gradient's and the input gradient's. No convolution built on
  these GEMMs (im2col or im2row) can take less;
- PyTorch's ``conv2d`` forward and backward (oneDNN), when torch is installed.

and sums them over the network's 19 convolutions, so that the GEMM floor can be set against
PyTorch's time for the same work:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_floor.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import threading
import time

# one-thread BLAS calls, as nettrain runs them: its own worker threads split the batch
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

# (in channels, out channels, input size, stride, count in ResNet-20)
SHAPES = [(3, 16, 32, 1, 1), (16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5), (32, 64, 16, 2, 1),
          (64, 64, 8, 1, 5)]


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def nettrain_times(c: int, f: int, size: int, stride: int, batch: int, repeats: int) -> tuple[float, float]:
    """(whole convolution, its GEMMs alone), forward + backward, milliseconds."""
    from nettrain import kernels
    from nettrain.kernels import gemm, pool
    from nettrain.kernels.geometry import ConvGeometry

    out = (size + 2 - 3) // stride + 1
    g = ConvGeometry((c, size, size), (3, 3), (stride, stride), (1, 1), (1, 1, 1, 1), (out, out))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, size, size), dtype=np.float32)
    kernel = rng.standard_normal((f, c, 3, 3), dtype=np.float32) * 0.1
    dy = rng.standard_normal((batch, f, out, out), dtype=np.float32)
    ops = kernels.backend(np.float32)
    input_grad = c != 3  # a first layer's input needs no gradient

    def whole():
        kernels.conv2d_forward(x, kernel, None, g, ops)
        kernels.conv2d_backward(x, kernel, dy, g, False, ops, input_grad)

    rows_layout = kernels.channels_last(g, ops)
    sample = gemm.rows_sample_bytes(g, 4) if rows_layout else g.rows * g.pixels * 4
    workers = pool.chunk_workers()
    chunks = pool.batch_chunks(batch, sample, workers)
    largest = max(b - a for a, b in chunks)
    w = np.ascontiguousarray(kernel.reshape(f, -1).T)  # (rows, F) as a GEMM operand
    local = threading.local()

    def gemms_only():
        def work(_, share):
            if not hasattr(local, "operands"):  # each thread's own, made once, finite values
                m = largest * g.pixels
                local.operands = (np.full((m, g.rows), 0.5, np.float32), np.full((m, f), 0.5, np.float32),
                                  np.empty((m, f), np.float32), np.empty((f, g.rows), np.float32),
                                  np.empty((m, g.rows), np.float32))
            patches, grad, z, dw, dpatches = local.operands
            for a, b in share:
                m = (b - a) * g.pixels
                np.matmul(patches[:m], w, out=z[:m])  # forward
                np.matmul(grad[:m].T, patches[:m], out=dw)  # kernel gradient
                if input_grad:
                    np.matmul(grad[:m], w.T, out=dpatches[:m])  # the patches' gradient

        pool.run_on_chunks(work, chunks, workers)

    return best_of(whole, repeats), best_of(gemms_only, repeats)


def torch_time(c: int, f: int, size: int, stride: int, batch: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    x = torch.randn(batch, c, size, size, requires_grad=c != 3)
    conv = torch.nn.Conv2d(c, f, 3, stride=stride, padding=1, bias=False)
    out = (size + 2 - 3) // stride + 1
    dy = torch.randn(batch, f, out, out)

    def step():
        conv.weight.grad = None
        x.grad = None
        conv(x).backward(dy)

    return best_of(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    os.environ["NETTRAIN_THREADS"] = str(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    from nettrain.kernels import kernel_path

    print(f"ResNet-20 convolutions, batch {args.batch_size}, {args.threads} thread(s), nettrain kernels: "
          f"{kernel_path()}; forward + backward, ms (best of {args.repeats})")
    print("| shape (C->F, size, stride) | count | nettrain | its GEMMs alone | PyTorch | GEMMs / PyTorch |")
    print("|---|---|---|---|---|---|")
    totals = np.zeros(3)
    for c, f, size, stride, count in SHAPES:
        whole, floor = nettrain_times(c, f, size, stride, args.batch_size, args.repeats)
        theirs = torch_time(c, f, size, stride, args.batch_size, args.repeats)
        totals += count * np.array([whole, floor, theirs or np.nan])
        ratio = "" if theirs is None else f"{floor / theirs:.2f}"
        shown = "n/a" if theirs is None else f"{theirs:.2f}"
        print(f"| {c}->{f}, {size}x{size}, /{stride} | {count} | {whole:.2f} | {floor:.2f} | {shown} | {ratio} |")
    whole, floor, theirs = totals
    shown, ratio = ("n/a", "") if np.isnan(theirs) else (f"{theirs:.1f}", f"{floor / theirs:.2f}")
    print(f"| all {sum(shape[-1] for shape in SHAPES)} | | {whole:.1f} | {floor:.1f} | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
