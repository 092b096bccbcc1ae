"""The training loop on every rank: :class:`DistributedTrainer`.

It is :class:`nettrain.training.Trainer` with

* :class:`~nettrain.distributed.step.DistributedTrainStep` and
  :class:`~nettrain.distributed.evaluation.DistributedEvalLoop` as its step and
  validation, and a :class:`~nettrain.distributed.step.CollectiveStop`, so that a
  signal stops every rank after the same step;
* an agreement at start: every rank reports its config hash, data fingerprint and
  nettrain version, and a rank that differs from rank 0 (or failed to set up)
  stops the job on every rank with one message;
* rank 0 alone writing the run folder (others hold a :class:`QuietRecorder`); on
  resume rank 0 reads ``last.npz`` and sends it to the others, so they need no
  access to the run folder;
* the rank count saved with the progress, so a resume under another count says so;
* a check at each epoch's end that the ranks still hold the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zlib
from functools import partial
from typing import Any

import numpy as np

from .. import __version__
from ..checkpoint import Checkpoint, config_hash
from ..errors import NettrainError, TrainingError
from ..runs import RunDir
from ..training import RunRecorder, Trainer
from ..kernels import chunk_workers
from .evaluation import DistributedEvalLoop
from .step import CollectiveStop, DistributedTrainStep


class EveryRankError(NettrainError):
    """An error that every rank raises at the same point: no rank has to end the others.

    Rank 0 prints ``message`` (other ranks may hold an empty one); every rank exits
    with ``exit_code``.
    """

    def __init__(self, message: str = "", exit_code: int = 2, problems: list[str] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.problems = problems or ([message] if message else [])

    @classmethod
    def of(cls, error: BaseException) -> "EveryRankError":
        return cls(str(error), getattr(error, "exit_code", 2), getattr(error, "problems", None))


# --------------------------------------------------------------------------- the agreement at start

def hash_split(h, split) -> None:
    """Add a split to hash ``h``: its shapes, every label and a spread of 256 samples."""
    if split is None:
        h.update(b"-")
        return
    h.update(repr((split.x.shape, str(split.x.dtype), split.y.shape)).encode())
    h.update(np.ascontiguousarray(split.y).tobytes())
    h.update(np.ascontiguousarray(split.x[:: max(1, len(split.x) // 256)]).tobytes())


def data_fingerprint(data) -> str:
    """A hash of the training and validation splits (see :func:`hash_split`), the classes and the normalization."""
    h = hashlib.sha256()
    hash_split(h, data.train)
    hash_split(h, data.val)
    h.update(json.dumps(list(data.classes)).encode())
    for stat in (data.mean, data.std):
        h.update(b"-" if stat is None else np.ascontiguousarray(stat).tobytes())
    return h.hexdigest()


FINGERPRINT_ADVICE = {
    "version": "install the same nettrain on every host",
    "config": "start every rank with the same config file and --set options",
    "data": "every rank must read the same data set: copy it to every host or put it on a shared file system",
}


def agree(comm, fingerprint: dict[str, Any] | None, error: tuple[str, int] | None = None) -> list[dict[str, Any]]:
    """Every rank says whether it set up (with ``fingerprint``) or failed (``error``: message, exit code).

    Returns every rank's fingerprint, in rank order, when all set up alike (the keys
    of :data:`FINGERPRINT_ADVICE` must equal rank 0's; others, like the host and
    process id, may differ); else raises :class:`EveryRankError` on every rank,
    naming the first rank that failed or differs from rank 0.
    """
    entries = comm.allgather(("error", *error) if error else ("ok", fingerprint))
    failed = [(rank, e) for rank, e in enumerate(entries) if e[0] == "error"]
    if failed:
        rank, (_, message, code) = failed[0]
        if len(failed) == comm.size and all(e[1] == message for _, e in failed):
            raise EveryRankError(message, code)  # the same problem everywhere: say it once
        raise EveryRankError(f"rank {rank} of {comm.size}: {message}", code)
    reference = entries[0][1]
    for rank, (_, theirs) in enumerate(entries[1:], start=1):
        for key, advice in FINGERPRINT_ADVICE.items():
            if theirs.get(key) != reference.get(key):
                raise EveryRankError(f"rank {rank} of {comm.size} has another {key} than rank 0 "
                                     f"({theirs.get(key, '?')[:12]} vs {reference.get(key, '?')[:12]}); {advice}")
    comm.agreed = True
    return [e[1] for e in entries]


def process_fingerprint() -> dict[str, Any]:
    """Where this rank runs, for the run header: mpiexec names a rank that died by its host and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


# --------------------------------------------------------------------------- the run folder

class QuietRecorder(RunRecorder):
    """The run folder as ranks other than 0 hold it: its path and rows, nothing read or written."""

    writes = False

    def __init__(self, path: str):
        super().__init__(RunDir(path), [], plots=False)

    def write_config(self, text: str) -> None:
        pass

    def write_summary(self, model, config) -> None:
        pass

    def keep_rows(self, epochs: int) -> list[dict[str, Any]]:
        return self.rows

    def record_epoch(self, row, checkpoint, best) -> None:
        self.rows.append(row)

    def save_last(self, checkpoint) -> None:
        pass


# --------------------------------------------------------------------------- the trainer

class DistributedTrainer(Trainer):
    """:class:`Trainer` as one rank of ``comm``; see the module doc. ``reporter`` is rank 0's.

    ``stop``: the :class:`CollectiveStop` whose signal handlers the caller installed
    already (so that a signal during the set-up is not lost); None: a new one, whose
    handlers :meth:`fit` installs.
    """

    def __init__(self, config, *, comm, resume=None, reporter=None, data=None, model=None,
                 stop: CollectiveStop | None = None, allow_changes: bool = False):
        self.comm = comm
        self._collective_stop = stop or CollectiveStop()
        distributed = getattr(config.train, "distributed", None)
        self.sync_batchnorm = bool(getattr(distributed, "sync_batchnorm", True))
        self.step_class = partial(DistributedTrainStep, comm=comm, sync_batchnorm=self.sync_batchnorm,
                                  stop=self._collective_stop)
        self.eval_class = partial(DistributedEvalLoop, comm=comm)
        self._resume_from: Checkpoint | None = None
        super().__init__(config, resume=resume, reporter=reporter, data=data, model=model, allow_changes=allow_changes)
        self.stop = self._collective_stop

    # -- start --------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"version": __version__, "config": config_hash(self.config_text), "data": data_fingerprint(self.data),
                **process_fingerprint()}

    def _open_run(self, resume) -> None:
        self.processes = [(f["host"], f["pid"]) for f in agree(self.comm, self.fingerprint())]
        if self.comm.is_root:
            try:
                super()._open_run(resume)
            except NettrainError as e:
                self.comm.bcast(("error", e.exit_code))
                raise EveryRankError.of(e) from None
            self.comm.bcast(("ok", str(self.run.path), self._resume_from))
            return
        outcome = self.comm.bcast(None)
        if outcome[0] == "error":
            raise EveryRankError("", outcome[1])
        _, path, self._resume_from = outcome
        self.recorder = QuietRecorder(path)
        if self._resume_from is not None:
            self._restore()

    def _load_last(self) -> Checkpoint:
        if self.comm.is_root:
            self._resume_from = super()._load_last()
            saved = int(self._resume_from.trainer_state.get("state", {}).get("ranks", 1))
            if saved != self.comm.size:
                self.reporter.note(f"{self.run.last} was saved by {saved} process(es) and continues on "
                                   f"{self.comm.size} ranks: the same global batch of {self.batch_size}, so the run "
                                   "continues correctly, equal to the uninterrupted one up to the order of float sums")
        return self._resume_from

    def _progress_state(self) -> dict[str, Any]:
        return {**super()._progress_state(), "ranks": self.comm.size}

    def _start_info(self) -> dict[str, Any]:
        return {**super()._start_info(), "ranks": self.comm.size, "threads": chunk_workers(),
                "batch_size": self.batch_size, "sync_batchnorm": self.sync_batchnorm, "processes": self.processes}

    # -- errors every rank meets alike ------------------------------------------------
    def _bad_step(self, bad) -> None:
        try:
            super()._bad_step(bad)
        except TrainingError as e:  # the reduced loss or gradients: the same on every rank
            raise EveryRankError.of(e) from None

    def finish_epoch(self):
        if self.stats.seen == 0:
            try:
                return super().finish_epoch()
            except TrainingError as e:
                raise EveryRankError.of(e) from None
        self.check_replicas()
        return super().finish_epoch()

    # -- identical weights ------------------------------------------------------------
    def replica_state(self) -> list[np.ndarray]:
        return [*self.model.parameters().values(), *self.model.buffers().values(),
                *self.optimizer.state_dict().values()]

    def check_replicas(self) -> None:
        """Every rank should hold rank 0's weights bit for bit; one that drifted gets rank 0's again."""
        crc = 0
        for a in self.replica_state():
            crc = zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8), crc)
        crcs = self.comm.allgather(crc)
        drifted = [rank for rank, c in enumerate(crcs) if c != crcs[0]]
        if not drifted:
            return
        state = self.comm.bcast((self.model.parameters(), self.model.buffers(), self.optimizer.state_dict())
                                if self.comm.is_root else None)
        if not self.comm.is_root:
            self.model.load_arrays(state[0], state[1])
            self.optimizer.load_state_dict(state[2])
        self.reporter.note(f"the weights of rank(s) {', '.join(map(str, drifted))} drifted from rank 0's "
                           "(float rounding); every rank continues from rank 0's")
