"""Keep freed memory in the process for the next training step (glibc's malloc; inert elsewhere).

A training step allocates and frees the same large arrays every step: activations, their
gradients, the layers' outputs. glibc hands big freed blocks back to the OS (``munmap``, or
trimming the top of the heap), so the next step gets fresh pages, which the kernel faults in
and zeroes one by one, serialised over the threads. Measured at 2 threads, batch 128: 2,058
minor faults and 17 ms of system time in an 82 ms fashion_cnn step, 1,929 faults in a 516 ms
ResNet-20 step, 154 in a 28 ms alexnet_100 step. With blocks of up to 32 MiB (glibc's largest
mmap threshold) taken from the heap and the heap never trimmed, 25, 52 and 0 faults remained
and the steps took 56, 470 and 22 ms (benchmarks/README.md, round five).

The price: memory freed stays with the process, so its resident size stays at its peak,
which a training loop reaches again at every step anyway. ``nettrain`` applies it when a
command starts (:func:`nettrain.cli.main`), as does a sweep trial; a program that imports
nettrain calls :func:`keep_freed_memory` itself if it wants it.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20
"""Blocks this large or smaller come from the heap: glibc's upper limit for the threshold."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap above this goes back to the OS: in effect never."""

active = False
"""Whether :func:`keep_freed_memory` has set malloc in this process."""

USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_tuned() -> bool:
    """Whether the environment sets glibc's malloc itself (left as it is then)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in tunables


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (see the module doc); True when it took.

    Does nothing where there is no glibc ``mallopt`` (macOS, musl), when the environment
    tunes malloc itself, or with ``NETTRAIN_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("NETTRAIN_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if user_tuned():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    global active
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    active = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return active
