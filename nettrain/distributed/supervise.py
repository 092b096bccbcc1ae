"""A watcher per rank, so that a rank killed by a signal is named in one line.

When a rank dies of a signal (the out-of-memory killer's SIGKILL, a crash in
native code), it cannot say so itself, and mpiexec then kills the other ranks
with SIGKILL too: all anyone sees is the launcher's banner with a process id.
So under mpiexec on Linux, every ``nettrain`` process that mpiexec starts forks
first thing in :func:`nettrain.cli.main`, before mpi4py is imported or any command runs:

* the child (the *worker*) runs the command, as rank ``PMI_RANK``, in a process
  group of its own, and dies with its parent (``PR_SET_PDEATHSIG``), so that when
  mpiexec kills the watcher, the worker goes too;
* the parent (the *watcher*) passes on every signal mpiexec sends (SIGINT, SIGTERM,
  ...) to the worker exactly once, waits for it, and exits as it did; if the
  worker died of a signal, it first prints::

      error: rank 1 of 2 (process 4242 on node7) was killed by SIGKILL (...)

Only the rank that died first has a watcher left to print: the others' watchers
are killed by mpiexec with their workers. ``NETTRAIN_SUPERVISE=0`` turns the
watcher off (the worker is then the process mpiexec started).
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from .launch import is_parallel_launch, launched_rank, launched_size

FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT", "SIGTSTP")
CAUSES = {
    "SIGKILL": "the out-of-memory killer or kill -9",
    "SIGSEGV": "a crash in native code",
    "SIGBUS": "a crash in native code, or a file it mapped went away",
    "SIGABRT": "an abort in native code",
    "SIGILL": "an instruction this CPU lacks: were the kernels compiled on another machine?",
}
PR_SET_PDEATHSIG = 1


def supervise() -> None:
    """Under mpiexec on Linux, split into watcher and worker (see the module doc); returns in the worker only.

    Does nothing (and returns) for a single process, on other systems, or with
    ``NETTRAIN_SUPERVISE=0``.
    """
    if (sys.platform != "linux" or os.environ.get("NETTRAIN_SUPERVISE", "1") == "0"
            or os.environ.get("NETTRAIN_WORKER") or not is_parallel_launch()):
        return
    watcher = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # a signal that comes before the watcher's handlers are in place waits for them, instead of killing it
    forwarded = {getattr(signal, name) for name in FORWARDED if hasattr(signal, name)}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
    worker = os.fork()
    if worker == 0:
        os.environ["NETTRAIN_WORKER"] = "1"
        os.setpgid(0, 0)  # signals to the watcher's group reach the worker once, through the watcher
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _die_with_parent(watcher)
        return
    os._exit(watch(worker, unblock=blocked))


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the watcher is gone already
        os._exit(128 + int(signal.SIGKILL))


def watch(worker: int, unblock: set | None = None) -> int:
    """Pass signals on to ``worker``, wait for it, and return the exit code the watcher should end with.

    ``unblock``: the signal mask to restore once the handlers are in place (signals held since the fork
    are then passed on).
    """

    def forward(signum, frame) -> None:
        try:
            os.kill(worker, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    if unblock is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblock)
    _, status = os.waitpid(worker, 0)  # retried by Python when a signal interrupts it
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        os.write(2, (death_line(worker, signum) + "\n").encode())
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def death_line(pid: int, signum: int) -> str:
    """The one line that names the rank that died of ``signum``."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    cause = CAUSES.get(name)
    return (f"error: rank {launched_rank()} of {launched_size()} (process {pid} on {socket.gethostname()}) "
            f"was killed by {name}" + (f" ({cause})" if cause else "")
            + "; mpiexec stops the other ranks, and the run folder keeps the last checkpoint saved before it")
