"""``nettrain train``, ``bench`` and ``eval`` as one rank of a job that mpiexec started.

The CLI hands a command here when :func:`~nettrain.distributed.launch.is_parallel_launch`
says so. Each function returns the exit code; rank 0 prints, other ranks stay quiet.

Faults. Until every rank has set up (config, data, model, run folder) a rank that
fails takes part in the start-up agreement with its error, so every rank stops
together and rank 0 prints one line naming the rank. Errors every rank meets alike
later on (a non-finite loss, which all ranks see after the reduction) end every
rank the same way. Any other error on one rank prints ``error: rank R of N: ...``
and ends the whole job at once with ``MPI_Abort``, so no rank waits forever in
a collective; a rank killed outright (SIGKILL, the OOM killer) is noticed by
mpiexec, which ends the others and names the process in its own message.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..console import ConsoleReporter
from ..errors import NettrainError
from ..training import Reporter
from ..training.step import NonFiniteStep
from .launch import default_threads, launched_rank
from .step import CollectiveStop, DistributedTrainStep, share
from .trainer import EveryRankError, agree

# --------------------------------------------------------------------------- the job


def connect():
    """The world communicator, or None after rank 0 printed why there is none (no mpi4py)."""
    from .comm import world

    try:
        return world()
    except NettrainError as e:
        if launched_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return None


def configure_threads(comm) -> str:
    """Set this rank's worker threads (NETTRAIN_THREADS) unless the user did; returns how they were chosen."""
    if os.environ.get("NETTRAIN_THREADS", "").strip():
        comm.allgather(None)  # every rank takes part, whichever way it decides
        return "set by NETTRAIN_THREADS"
    try:
        mine = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        mine = set(range(os.cpu_count() or 1))
    host = socket.gethostname()
    everyone = comm.allgather((host, mine))
    on_this_host = [entry[1] for entry in everyone if entry is not None and entry[0] == host]
    threads, how = default_threads(mine, on_this_host or [mine])
    os.environ["NETTRAIN_THREADS"] = str(threads)
    return how


def describe(error: BaseException) -> tuple[str, int]:
    """One line and an exit code for an error."""
    if isinstance(error, NettrainError):
        return "; ".join(getattr(error, "problems", None) or [str(error)]), error.exit_code
    if isinstance(error, MemoryError):
        return "out of memory; lower train.batch_size, the layer sizes or data.subset", 2
    if isinstance(error, KeyboardInterrupt):
        return "stopped by a second signal; checkpoints already written are intact", 130
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}", 1


def set_up(comm, fn: Callable[[], Any]) -> Any:
    """``fn()``; if it fails before the start-up agreement, this rank joins the agreement with its error."""
    try:
        return fn()
    except EveryRankError:
        raise
    except Exception as e:
        if comm.agreed:
            raise
        agree(comm, None, describe(e))
        raise  # agree raised already; for type checkers


def on_every_rank(comm, body: Callable[[], int]) -> int:
    """Run ``body`` on this rank; see the module doc for what each kind of failure does."""
    try:
        return body()
    except SystemExit:
        raise
    except EveryRankError as e:
        if comm.is_root:
            for line in e.problems:
                print(f"error: {line}", file=sys.stderr, flush=True)
        return e.exit_code
    except BaseException as e:  # noqa: B036 - KeyboardInterrupt too: the other ranks must not wait
        message, code = describe(e)
        print(f"error: rank {comm.rank} of {comm.size}: {message}", file=sys.stderr, flush=True)
        comm.abort(code)
        return code


# --------------------------------------------------------------------------- train

class RanksConsoleReporter(ConsoleReporter):
    """The console reporter of rank 0, whose header also says how the job is spread."""

    def __init__(self, threads_how: str, **kwargs):
        super().__init__(**kwargs)
        self.threads_how = threads_how

    def train_start(self, info: dict[str, Any]) -> None:
        super().train_start(info)
        ranks, threads, batch = info["ranks"], info["threads"], info["batch_size"]
        statistics = "over the global batch" if info["sync_batchnorm"] else "per rank (sync_batchnorm: false)"
        self.console.print(f"{ranks} ranks x {threads} thread{'s' if threads > 1 else ''} each ({self.threads_how}); "
                           f"global batch {batch}, about {batch / ranks:.3g} per rank; "
                           f"BatchNorm statistics {statistics}")
        self.console.print(f"process ids: {process_list(info['processes'])}")


def process_list(processes: list[tuple[str, int]]) -> str:
    """``ranks 0-1 on vm: 101 102; ranks 2-3 on node2: 201 202`` (runs of consecutive ranks on one host)."""
    runs: list[tuple[str, int, list[str]]] = []
    for rank, (host, pid) in enumerate(processes):
        if runs and runs[-1][0] == host:
            runs[-1][2].append(str(pid))
        else:
            runs.append((host, rank, [str(pid)]))
    return "; ".join(f"rank{'s' if len(pids) > 1 else ''} {first}{f'-{first + len(pids) - 1}' if len(pids) > 1 else ''} "
                     f"on {host}: {' '.join(pids)}" for host, first, pids in runs)


def train(config: Path | None, overrides: list[str], resume: Path | None, quiet: bool,
          allow_changes: bool = False) -> int:
    """``nettrain train`` on every rank: one run, rank 0 writing it (``config`` None: the run folder's)."""
    comm = connect()
    if comm is None:
        return 2
    threads_how = configure_threads(comm)
    stop = CollectiveStop()
    console: list[RanksConsoleReporter] = []

    def body() -> int:
        def setup():
            from ..commands.training import train_config
            from .trainer import DistributedTrainer

            cfg = train_config(config, resume, overrides)
            if comm.is_root:
                console.append(RanksConsoleReporter(threads_how, quiet=quiet, log_every=cfg.train.log_every))
            reporter = console[0] if console else Reporter()
            return DistributedTrainer(cfg, comm=comm, resume=resume, reporter=reporter, stop=stop,
                                      allow_changes=allow_changes)

        from ..commands.training import resume_command

        with stop.handling_signals():  # from the start: a signal during set-up stops after the first step
            trainer = set_up(comm, setup)
            result = trainer.fit(handle_signals=False)
        if comm.is_root:
            out = console[0].console
            if result.best_value is not None:
                out.print(f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}")
            if result.stopped == "interrupted":
                epoch, batch = result.cursor
                at = f"epoch {epoch + 1}, batch {batch}" if batch else f"the end of epoch {epoch}"
                print(f"interrupted at {at}; saved {result.run_dir / 'checkpoints' / 'last.npz'}", file=sys.stderr)
                print(f"resume with: mpiexec -n {comm.size} {resume_command(result.run_dir)}", file=sys.stderr,
                      flush=True)
            else:
                out.print(f"run folder: {result.run_dir}")
        return result.exit_code

    return on_every_rank(comm, body)


# --------------------------------------------------------------------------- bench

class BenchStep(DistributedTrainStep):
    """The distributed step as ``nettrain bench`` times it: a non-finite step ends every rank alike."""

    def __call__(self, x, y):
        try:
            return super().__call__(x, y)
        except NonFiniteStep as e:
            raise EveryRankError(f"the training step went non-finite on random inputs ({e}); "
                                 "lower train.optimizer.lr or set train.clip_grad_norm") from None


def bench(config: Path, overrides: list[str], batch_size: int, steps: int, warmup: int,
          use_fast: bool | None) -> tuple[int, dict[str, Any] | None]:
    """``nettrain bench`` on every rank: the global batch split over the ranks; rank 0 gets the result."""
    comm = connect()
    if comm is None:
        return 2, None
    threads_how = configure_threads(comm)
    outcome: dict[str, Any] = {}

    def body() -> int:
        from ..bench import benchmark
        from ..checkpoint import config_hash
        from ..kernels import compiled_available

        def setup():
            from .. import __version__
            from ..config import load_config

            cfg = load_config(config, overrides)
            if batch_size < comm.size:
                raise NettrainError(f"--batch-size {batch_size} is the global batch: give at least one sample "
                                    f"to each of the {comm.size} ranks")
            if use_fast and not compiled_available():
                raise NettrainError("--fast needs numba; install it with: pip install 'nettrain[fast]'")
            agree(comm, {"version": __version__, "config": config_hash(cfg.to_yaml())})
            return cfg

        cfg = set_up(comm, setup)
        start, stop = share(batch_size, comm.rank, comm.size)
        result = benchmark(cfg, batch_size=batch_size, steps=steps, warmup=warmup, use_fast=use_fast,
                           make_step=partial(BenchStep.from_spec, comm=comm), shard=slice(start, stop))
        # the ranks step together: the global rates are the global batch over the slowest rank's times
        mine = np.array([result["train_step_ms"], result["forward_ms"]], np.float64)
        slowest = comm.allreduce_max(mine.copy())
        memory = comm.allgather(result["peak_rss_mib"])
        peak = float(comm.allreduce_sum(np.array([result["sgemm_peak_gflops"]], np.float64))[0])
        train_gflops = result["train_gflops"] * mine[0] / slowest[0]
        for row in result["layers"]:  # rank 0's own layers, on its rows of the batch
            for key in ("forward_gflops", "backward_gflops"):
                if row.get(key) is not None:
                    row[key] *= (stop - start) / batch_size
        result.update({
            "ranks": comm.size,
            "layout": f"{comm.size} ranks x {result['threads']} thread(s) each ({threads_how})",
            "train_step_ms": float(slowest[0]),
            "train_img_per_s": batch_size / (slowest[0] / 1e3),
            "forward_ms": float(slowest[1]),
            "forward_img_per_s": batch_size / (slowest[1] / 1e3),
            "train_gflops": train_gflops,
            "forward_gflops": result["forward_gflops"] * mine[1] / slowest[1],
            "sgemm_peak_gflops": peak,
            "sgemm_peak_on": f"{comm.size} ranks x {result['threads']} thread(s)",
            "peak_fraction": train_gflops / peak,
            "peak_rss_mib": None if None in memory else max(memory),
            "peak_rss_mib_all_ranks": None if None in memory else sum(memory),
        })
        outcome["result"] = result
        return 0

    code = on_every_rank(comm, body)
    return code, outcome.get("result") if comm.is_root else None


# --------------------------------------------------------------------------- eval

def evaluate(checkpoint: Path, split: str, overrides: list[str]) -> tuple[int, dict[str, Any] | None]:
    """``nettrain eval`` on every rank: each evaluates its rows of the split; rank 0 gets the report."""
    comm = connect()
    if comm is None:
        return 2, None
    configure_threads(comm)
    outcome: dict[str, Any] = {}

    def body() -> int:
        from .. import __version__
        from ..checkpoint import config_hash
        from ..evaluate import evaluate as evaluate_model, load_split, load_trained
        from .evaluation import DistributedEvalLoop
        from .trainer import hash_split

        def setup():
            trained = load_trained(checkpoint, overrides)
            data = load_split(trained, split)
            digest = hashlib.sha256()
            hash_split(digest, data)
            agree(comm, {"version": __version__, "config": config_hash(trained.config.to_yaml()),
                         "data": digest.hexdigest()})
            return trained, data

        trained, data = set_up(comm, setup)
        config = trained.config
        batch_size = int(getattr(config.train, "eval_batch_size", None) or config.train.batch_size)
        report = evaluate_model(trained.model, data, trained.classes, config.train.loss, batch_size,
                                loop_class=partial(DistributedEvalLoop, comm=comm))
        ckpt = trained.checkpoint
        outcome["report"] = {"checkpoint": str(trained.path), "split": split, "epoch": ckpt.epoch,
                             "batch": ckpt.batch, **report}
        return 0

    code = on_every_rank(comm, body)
    return code, outcome.get("report") if comm.is_root else None
