"""Hyper-parameter sweeps on Ray Tune: ``nettrain sweep SPEC``.

A sweep spec (YAML) names a base config, fixed ``--set``-style overrides and a
search space of dotted config paths; every trial is a normal nettrain run in
``<sweep folder>/trials/<trial>/``.

- :mod:`nettrain.sweep.spec`: the spec's schema, loading with ``file:line`` errors,
  and the checks against the base config (no Ray needed);
- :mod:`nettrain.sweep.runner`: the Ray Tune side (imported only by the command);
- :mod:`nettrain.sweep.results`: ``results.csv``, ``results.json``, ``best.yaml``;
- :mod:`nettrain.sweep.console`: the terminal output of the command.

Ray and Optuna come with the ``sweep`` extra; :func:`require_ray` turns their
absence into one line saying ``pip install 'nettrain[sweep]'``.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import NettrainError

INSTALL_HINT = "pip install 'nettrain[sweep]'"

# Offline and quiet unless the user says otherwise: no usage stats, no token prompt, no
# experiment-snapshot warnings, no per-trial working directory, no Tune tables or loggers
# (a sweep's progress comes from nettrain; its numbers are in the trials' run folders).
RAY_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def require_ray() -> None:
    """Set Ray's quiet, offline defaults and import Ray Tune, or raise a NettrainError that says how to install it."""
    for name, value in RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:
        raise NettrainError(f"nettrain sweep needs Ray Tune, which is not installed; {INSTALL_HINT}") from None


def require_optuna() -> None:
    """Import Optuna (``search: optuna``), or raise a NettrainError that says how to install it."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise NettrainError(f"search: optuna needs Optuna, which is not installed; {INSTALL_HINT}") from None


class SweepProgress:
    """What the sweep tells its user; this base class ignores it all (the CLI's prints it)."""

    def starting_ray(self, address: str | None) -> None:
        """Before ``ray.init`` (seconds, and several hundred MB)."""

    def ray_ready(self, seconds: float, cpus: float) -> None:
        """Ray is up; ``cpus`` in the cluster."""

    def sweep_start(self, info: dict[str, Any]) -> None:
        """folder, name, trials, samples, grid_points, search, scheduler, concurrent, metric, mode, resumed."""

    def trial_start(self, trial: str, params: dict[str, Any], epochs: int | None, done: int = 0) -> None:
        """A trial got a worker; ``epochs`` it will train, ``done`` already (a resumed trial)."""

    def trial_result(self, trial: str, row: dict[str, Any]) -> None:
        """A trial finished an epoch; ``row`` is its metric row."""

    def trial_end(self, trial: str, status: str, message: str = "") -> None:
        """A trial ended: completed, stopped early or failed (``message``: its one-line error)."""

    def note(self, message: str) -> None:
        """Something the user should know."""
