"""The Ray Tune side of ``nettrain sweep``: Ray itself, the trial function, the Tuner and ``--resume``.

Imported only by the sweep command, after :func:`nettrain.sweep.require_ray`
(which also sets Ray's quiet, offline defaults). Each trial is one call of
:func:`run_trial` in a Ray worker: it validates its config like ``--set``, trains
it with :func:`nettrain.training.train` into ``<sweep>/trials/<trial>/`` and
reports every epoch's metric row to Tune with ``ray.tune.report`` and a
``ray.tune.Checkpoint`` that points at the run folder (whose ``last.npz`` is what
a resumed trial continues from). Progress reaches the terminal through a
:class:`SweepProgress` the command passes in; this module never prints.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from ..config import load_config
from ..errors import ConfigError, NettrainError
from ..runs import RunDir, write_text_atomic
from ..training import Reporter
from . import SweepProgress
from .results import (COMPLETED, FAILED, STOPPED_EARLY, SweepFolder, TrialRecord, best_config_text, best_first,
                      trial_record, write_results)
from .spec import AshaSpec, SweepPlan, load_spec, plan_sweep, yaml_value

POINTER = "nettrain_trial.json"  # what a trial's Tune checkpoint holds: where its run folder is
QUIET_LOGGERS = ("ray.tune", "ray.train", "ray.air", "ray.util")


@dataclass
class SweepOutcome:
    folder: SweepFolder
    name: str
    metric: str
    mode: str
    records: list[TrialRecord]  # best first
    total: int  # trials the spec asks for
    interrupted: bool
    best_yaml: Path | None = None


# ============================================================================ the trial (runs in a Ray worker)
class TrialFailed(Exception):
    """Why a trial cannot go on, in one line (an invalid sampled config, a non-finite loss, ...)."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled values (sent to the workers once)."""

    base: str  # absolute path of the base config
    base_shown: str
    fixed: tuple[str, ...]
    metric: str
    trials_dir: str
    threads: int


class TuneReporter(Reporter):
    """Reports each epoch's row to Tune with a checkpoint that names the run folder."""

    def __init__(self, metric: str, run_dir: Path):
        self.metric = metric
        self.run_dir = run_dir

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        metrics = {k: v for k, v in row.items() if v is not None}
        if self.metric not in metrics:
            raise TrialFailed(f"the run has no {self.metric} (no validation split?); set metric: in the spec "
                              "to a train_ metric, or data.validation_split in the base config")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, POINTER).write_text(json.dumps({"run_dir": str(self.run_dir), "epoch": row["epoch"]}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _run_dir_of(checkpoint, default: Path) -> Path:
    """The run folder a Tune checkpoint names (the trial's own folder when it names none)."""
    if checkpoint is None:
        return default
    with checkpoint.as_directory() as d:
        try:
            return Path(json.loads(Path(d, POINTER).read_text())["run_dir"])
        except (OSError, ValueError, KeyError):
            return default


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: validate the sampled config like ``--set``, then train (or continue) it."""
    os.environ["NETTRAIN_THREADS"] = str(setup.threads)
    from ..heap import keep_freed_memory
    from ..training import train

    keep_freed_memory()  # as the CLI does

    trial = tune.get_context().get_trial_id()
    run_dir = _run_dir_of(tune.get_checkpoint(), Path(setup.trials_dir) / trial)
    overrides = list(setup.fixed) + [f"{k}={yaml_value(v)}" for k, v in params.items()]
    overrides.append(f"output.dir={yaml_value(str(run_dir))}")
    try:
        config = load_config(setup.base, overrides)
        resume = run_dir if RunDir(run_dir).has_checkpoint() else None
        train(config, resume=resume, reporter=TuneReporter(setup.metric, run_dir))
    except ConfigError as e:
        raise TrialFailed("; ".join(e.problems).replace(setup.base, setup.base_shown)) from None
    except NettrainError as e:
        raise TrialFailed(str(e)) from None
    except MemoryError:
        raise TrialFailed("out of memory; lower train.batch_size, layer sizes or the concurrent trials") from None


def _trial_name(trial) -> str:
    return trial.trial_id


# ============================================================================ the driver side
def error_line(error: BaseException | None) -> str | None:
    """A trial's error as one line: a TrialFailed's message, else the exception's last line."""
    if error is None:
        return None
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, TrialFailed):
        return str(cause)
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if ": " in last else f"{type(cause).__name__}: {last}"


@dataclass
class _Session:
    """The sweep this process runs: its progress and what the callback learned about the trials."""

    plan: SweepPlan
    progress: SweepProgress
    epochs: dict[str, int | None] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # trials that completed, were stopped early or failed
    watching: bool = False  # the callbacks run in this process (not on a cluster's head through Ray Client)

    def trial_epochs(self, trial: str, params: dict) -> int | None:
        if trial not in self.epochs:
            try:
                self.epochs[trial] = int(self.plan.trial_config(params).train.epochs)
            except NettrainError:
                self.epochs[trial] = None
        return self.epochs[trial]


_ACTIVE: list[_Session] = []  # the Tuner pickles its callbacks; they find the running sweep here


class SweepCallback(tune.Callback):
    """Passes trial events to the running sweep's progress and records which trials ended.

    A trial ends when it completes, the scheduler stops it or it fails. Tune marks the
    trials it stops at Ctrl-C as terminated too, but ends them without these hooks
    (and saves them as running, which is what ``--resume`` continues).
    """

    def on_step_begin(self, iteration, trials, **info):
        if _ACTIVE and not _ACTIVE[-1].watching:
            s = _ACTIVE[-1]
            s.watching = True
            s.ended.update(t.trial_id for t in trials if t.status in (t.TERMINATED, t.ERROR))  # restored, already done

    def on_trial_start(self, iteration, trials, trial, **info):
        if _ACTIVE:
            s = _ACTIVE[-1]
            params = dict(trial.config)
            done = (trial.last_result or {}).get("epoch", 0)
            s.progress.trial_start(trial.trial_id, params, s.trial_epochs(trial.trial_id, params), done)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE:
            row = {k: result[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                          "lr", "seconds", "img_per_s") if k in result}
            row.update({k: v for k, v in result.items() if k.startswith("val_top")})
            _ACTIVE[-1].progress.trial_result(trial.trial_id, row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE:
            s = _ACTIVE[-1]
            epochs = s.trial_epochs(trial.trial_id, dict(trial.config))
            done = (trial.last_result or {}).get("epoch", 0)
            s.ended.add(trial.trial_id)
            s.progress.trial_end(trial.trial_id, COMPLETED if epochs is not None and done >= epochs else STOPPED_EARLY)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE:
            _ACTIVE[-1].ended.add(trial.trial_id)
            _ACTIVE[-1].progress.trial_end(trial.trial_id, FAILED, error_line(_trial_error(trial)) or
                                           "see error.txt in the trial's folder under tune/")


def _trial_error(trial) -> BaseException | None:
    """The exception a trial failed with, read from the driver's copy (storage gets it a little later)."""
    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # not written or not readable: the storage copy, else nothing
        pass
    try:
        return trial.get_pickled_error() or trial.get_error()
    except Exception:
        return None


def _domain(domain):
    a = domain.args
    return {
        "uniform": lambda: tune.uniform(a[0], a[1]),
        "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
        "loguniform": lambda: tune.loguniform(a[0], a[1]),
        "randint": lambda: tune.randint(a[0], a[1] + 1),  # the spec's ranges include both ends
        "lograndint": lambda: tune.lograndint(a[0], a[1] + 1),
        "choice": lambda: tune.choice(list(a)),
        "grid": lambda: tune.grid_search(list(a)),
    }[domain.kind]()


def _tuner(plan: SweepPlan, folder: SweepFolder, trainable):
    spec = plan.spec
    if spec.search == "optuna":
        from .. import sweep

        sweep.require_optuna()
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = OptunaSearch(seed=spec.seed)
    else:
        search = BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.concurrent or 0)
    if isinstance(spec.scheduler, AshaSpec):
        s = spec.scheduler
        scheduler = ASHAScheduler(time_attr="epoch", max_t=s.max_t or plan.max_epochs, grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space={key: _domain(d) for key, d in spec.space.items()},
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=search, scheduler=scheduler,
                                    num_samples=spec.trials,
                                    # Tune applies this to a Searcher (Optuna) only; the generator has its own
                                    max_concurrent_trials=spec.concurrent if spec.search == "optuna" else None,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=folder.tune.name, storage_path=str(folder.path.resolve()), verbose=0,
                                  callbacks=[SweepCallback()], checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _trainable(plan: SweepPlan, folder: SweepFolder):
    setup = TrialSetup(base=str(plan.base), base_shown=plan.base_shown, fixed=tuple(plan.fixed), metric=plan.metric,
                       trials_dir=str(folder.trials.resolve()), threads=plan.spec.resources.cpus)
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": plan.spec.resources.cpus})


@contextmanager
def ray_running(address: str | None, progress: SweepProgress, cpus_per_trial: int):
    """Ray for the sweep: the one already running in this process, else a new local one or ``address``'s."""
    started = False
    if not ray.is_initialized():
        progress.starting_ray(address)
        t0 = time.perf_counter()
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(address="local", include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise NettrainError(f"cannot start {where}: {error_line(e)}") from None
        started = True
        progress.ray_ready(time.perf_counter() - t0, ray.cluster_resources().get("CPU", 0))
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus_per_trial > cpus:
            message = f"resources.cpus is {cpus_per_trial} but the Ray cluster has {cpus:g} CPUs"
            if not address:
                raise NettrainError(f"{message}; lower resources.cpus in the spec")
            progress.note(f"{message}; trials wait until the cluster grows")
        for name in QUIET_LOGGERS:  # trial errors come back as one line each, not Tune's tracebacks
            logging.getLogger(name).setLevel(logging.CRITICAL)
        yield
    except ModuleNotFoundError as e:
        if "nettrain" not in str(e):
            raise
        raise NettrainError(f"the Ray cluster cannot import nettrain ({e}); install nettrain with the sweep extra "
                            "on every node") from None
    except (ray.exceptions.RayError, tune.TuneError) as e:
        raise NettrainError(f"Ray Tune stopped: {error_line(e)}") from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if started:
            ray.shutdown()


def _fit(plan: SweepPlan, folder: SweepFolder, progress: SweepProgress, make_tuner, resumed: bool) -> SweepOutcome:
    spec = plan.spec
    session = _Session(plan, progress)
    progress.sweep_start({
        "folder": folder.path, "name": plan.name, "trials": plan.total_trials, "samples": spec.trials,
        "grid_points": plan.grid_points, "search": spec.search, "scheduler": spec.scheduler.type,
        "concurrent": spec.concurrent, "metric": plan.metric, "mode": plan.mode, "resumed": resumed,
        "cpus": spec.resources.cpus,
    })
    _ACTIVE.append(session)
    try:
        grid = make_tuner().fit()
    finally:
        _ACTIVE.remove(session)
    records = []
    for result in grid:
        trial = Path(result.path).name
        params = {k: result.config[k] for k in spec.space if k in (result.config or {})}
        finished = (trial in session.ended) if session.watching else None
        records.append(trial_record(folder, trial, params, plan.metric, plan.mode, session.trial_epochs(trial, params),
                                    finished, error_line(result.error)))
    records = best_first(records, plan.mode)
    write_results(folder, records, plan.name, plan.metric, plan.mode)
    best_yaml = None
    if records and records[0].best is not None:
        config = plan.trial_config(records[0].params)
        write_text_atomic(folder.best_yaml, best_config_text(config, records[0], plan.name, plan.metric,
                                                             plan.base.parent, folder))
        best_yaml = folder.best_yaml
    unfinished = any(r.status == "unfinished" for r in records) or len(records) < plan.total_trials
    return SweepOutcome(folder=folder, name=plan.name, metric=plan.metric, mode=plan.mode, records=records,
                        total=plan.total_trials, interrupted=unfinished, best_yaml=best_yaml)


def run_sweep(plan: SweepPlan, progress: SweepProgress | None = None, address: str | None = None) -> SweepOutcome:
    """Run a checked sweep in a new sweep folder; returns what happened (also after Ctrl-C)."""
    progress = progress or SweepProgress()
    folder = SweepFolder.create(plan.name, plan.spec.output.dir, plan.spec.output.root)
    folder.write_spec(plan.resolved(folder.path), plan.spec.source_name, plan.spec.overrides_applied)
    with ray_running(address, progress, plan.spec.resources.cpus):
        trainable = _trainable(plan, folder)
        return _fit(plan, folder, progress, lambda: _tuner(plan, folder, trainable), resumed=False)


def resume_sweep(path: str | Path, progress: SweepProgress | None = None, address: str | None = None) -> SweepOutcome:
    """Continue an interrupted sweep from its folder with Tune's restore: finished trials stay, the rest go on."""
    progress = progress or SweepProgress()
    folder = SweepFolder.open(path)
    plan = plan_sweep(load_spec(folder.sweep_yaml))
    with ray_running(address, progress, plan.spec.resources.cpus):
        if not tune.Tuner.can_restore(str(folder.tune.resolve())):
            raise NettrainError(f"{folder.path}: Ray Tune's state ({folder.tune.name}/) is missing or incomplete, "
                                "so the sweep cannot be resumed; start it again")
        trainable = _trainable(plan, folder)

        def restore():
            return tune.Tuner.restore(str(folder.tune.resolve()), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False)

        return _fit(plan, folder, progress, restore, resumed=True)
