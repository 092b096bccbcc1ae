"""A stand-in for MPI in one process: N ranks as threads sharing a barrier.

:class:`ThreadComm` has the methods of :class:`nettrain.distributed.comm.Communicator`;
every collective is an exchange of values through shared slots between two barrier
waits, and sums are taken in rank order, so every rank gets the same bits as MPI's
all-reduce gives. :func:`run_ranks` runs ``fn(comm)`` on ``size`` threads and returns
their results; an exception on one rank breaks the barrier, so no thread hangs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np


class Aborted(Exception):
    """comm.abort() was called on some rank."""


class _Group:
    def __init__(self, size: int, timeout: float):
        self.size = size
        self.slots: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)

    def exchange(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before all have read them
        return everyone


class ThreadComm:
    def __init__(self, group: _Group, rank: int):
        self.group = group
        self.rank = rank
        self.size = group.size
        self.agreed = False
        self.calls: list[str] = []  # the collectives this rank took part in, in order

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def _exchange(self, name: str, value):
        self.calls.append(name)
        return self.group.exchange(self.rank, value)

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        parts = self._exchange("allreduce_sum", buf.copy())
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        buf[...] = total
        return buf

    def allreduce_max(self, buf: np.ndarray) -> np.ndarray:
        buf[...] = np.max(np.stack(self._exchange("allreduce_max", buf.copy())), axis=0)
        return buf

    def allgather_array(self, mine: np.ndarray) -> np.ndarray:
        return np.stack(self._exchange("allgather_array", np.array(mine, copy=True)))

    def allgather(self, obj):
        return self._exchange("allgather", obj)

    def bcast(self, obj=None, root: int = 0):
        return self._exchange("bcast", obj)[root]

    def abort(self, code: int) -> None:
        self.group.barrier.abort()
        raise Aborted(code)


def run_ranks(size: int, fn: Callable[[ThreadComm], Any], timeout: float = 60.0) -> list[Any]:
    """``[fn(comm) for each rank]``, the ranks running at once on threads; re-raises the first rank's error."""
    group = _Group(size, timeout)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def work(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as e:  # noqa: B036 - handed to the caller
            errors[rank] = e
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    for e in errors:
        if e is not None and not isinstance(e, threading.BrokenBarrierError):
            raise e
    for e in errors:
        if e is not None:
            raise e
    return results
