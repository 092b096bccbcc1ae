"""What the launcher told this process, read from its environment alone (no MPI imported).

``mpiexec`` (MPICH's Hydra, Intel MPI, Slurm's PMI) gives every process it starts
``PMI_RANK`` and ``PMI_SIZE``; Open MPI gives ``OMPI_COMM_WORLD_RANK`` and
``OMPI_COMM_WORLD_SIZE``; MVAPICH ``MV2_COMM_WORLD_*``. nettrain reads them to
decide, before importing anything, whether a command is one rank of several: a
plain ``nettrain train`` never imports mpi4py.
"""

from __future__ import annotations

import os

from ..errors import NettrainError

INSTALL_HINT = "pip install 'nettrain[mpi]'"

# (rank, size) variables of each launcher family, the most common first
LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
)


def _number(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def launched_size() -> int:
    """How many processes the launcher started (1 when not started by one)."""
    for _, size_var in LAUNCHER_VARIABLES:
        size = _number(size_var)
        if size is not None and size > 0:
            return size
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 when not started by one)."""
    for rank_var, _ in LAUNCHER_VARIABLES:
        rank = _number(rank_var)
        if rank is not None:
            return rank
    return 0


def is_parallel_launch() -> bool:
    """Whether this process is one of several started by mpiexec (or srun)."""
    return launched_size() > 1


def require_mpi4py():
    """``mpi4py.MPI``, or a NettrainError saying how to install it.

    Imported only here, once the environment says this process is one rank of
    several, so that one process never pays for MPI.
    """
    try:
        import mpi4py

        # only the main thread calls MPI; a lower thread level spares MPICH its locks
        mpi4py.rc.thread_level = "funneled"
        from mpi4py import MPI
    except ImportError as e:
        size = launched_size()
        raise NettrainError(f"this is one of {size} processes started by mpiexec, but mpi4py cannot be imported "
                            f"({e}); install the MPI extra on every host: {INSTALL_HINT}") from None
    return MPI


def default_threads(mine: set[int], on_this_host: list[set[int]]) -> tuple[int, str]:
    """Worker threads per rank when NETTRAIN_THREADS is not set, and why.

    ``mine``: the CPUs this rank may run on; ``on_this_host``: those of every rank on
    its host (this one included). Ranks that mpiexec bound to disjoint CPUs use theirs;
    ranks that share CPUs share them out, one thread at least.
    """
    ranks = len(on_this_host)
    disjoint = sum(len(cpus) for cpus in on_this_host) == len(set().union(*on_this_host))
    if disjoint and ranks > 1:
        return len(mine), f"the {len(mine)} core(s) mpiexec bound this rank to"
    threads = max(1, len(mine) // ranks)
    return threads, f"{len(mine)} cores shared by {ranks} ranks on this host; set NETTRAIN_THREADS to change"
