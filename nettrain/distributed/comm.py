"""The collective operations data-parallel training uses, over mpi4py or a stand-in.

:class:`Communicator` wraps an mpi4py communicator with the few operations
nettrain needs, in the buffer form that moves NumPy arrays without pickling
(``comm.Allreduce(MPI.IN_PLACE, buf)``) wherever the data is an array, and the
pickling lowercase form only for small Python objects at start-up. Tests run the
same code on threads with a stand-in of the same methods.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .launch import require_mpi4py


class Communicator:
    """``rank`` and ``size`` of this process in ``comm``, and the collectives nettrain uses."""

    def __init__(self, comm, MPI):
        self.comm = comm
        self.MPI = MPI
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.agreed = False  # set once every rank has set up alike (see nettrain.distributed.trainer.agree)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- arrays ---------------------------------------------------------------
    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Replace ``buf`` (contiguous) by its sum over all ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allreduce_max(self, buf: np.ndarray) -> np.ndarray:
        """Replace ``buf`` (contiguous) by its element-wise maximum over all ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return buf

    def allgather_array(self, mine: np.ndarray) -> np.ndarray:
        """Every rank's ``mine`` (same shape and dtype on all), stacked in rank order: ``(size, *shape)``."""
        mine = np.ascontiguousarray(mine)
        out = np.empty((self.size, *mine.shape), mine.dtype)
        self.comm.Allgather(mine, out)
        return out

    # -- small Python objects (start-up, checkpoints on resume) -----------------
    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    # -- the job ------------------------------------------------------------------
    def abort(self, code: int) -> None:
        """End every rank of the job now with exit ``code`` (MPI_Abort); never returns.

        MPICH prints a line of its own about the abort; the caller has printed the
        one that matters, so stderr is closed first.
        """
        sys.stderr.flush()
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        except OSError:
            pass
        self.comm.Abort(code)


def world() -> Communicator:
    """All the processes mpiexec started (MPI_COMM_WORLD); imports mpi4py."""
    MPI = require_mpi4py()
    return Communicator(MPI.COMM_WORLD, MPI)
