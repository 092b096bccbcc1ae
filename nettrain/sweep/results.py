"""A sweep folder and the files that sum it up (nothing here imports Ray).

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        sweep.yaml          the resolved spec (absolute base, metric and mode filled in)
        trials/<trial>/     each a normal nettrain run folder (config.yaml, metrics, checkpoints)
        results.csv         one row per trial, best first
        results.json        {"sweep", "metric", "mode", "best_trial", "trials": [...]}
        best.yaml           the best trial's complete config, ready for ``nettrain train``
        tune/               Ray Tune's own state (what ``--resume`` restores)

A trial's status is ``completed`` (it trained all its epochs), ``stopped early``
(the scheduler, or the config's own early stopping, ended it sooner; its run
folder is as valid as any), ``failed`` (with its one-line error) or ``unfinished``
(the sweep was interrupted before the trial ended; ``--resume`` continues it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import NettrainError
from ..runs import fresh_folder, read_metrics, write_json, write_text_atomic

COMPLETED, STOPPED_EARLY, FAILED, UNFINISHED = "completed", "stopped early", "failed", "unfinished"


class SweepFolder:
    """The paths of one sweep's folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def sweep_yaml(self) -> Path:
        return self.path / "sweep.yaml"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def results_json(self) -> Path:
        return self.path / "results.json"

    @property
    def best_yaml(self) -> Path:
        return self.path / "best.yaml"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    @property
    def tune(self) -> Path:
        return self.path / "tune"

    def trial_dir(self, trial: str) -> Path:
        return self.trials / trial

    @classmethod
    def create(cls, name: str, output_dir: str | None, root: str = "runs") -> "SweepFolder":
        """A fresh sweep folder: ``output_dir`` if given, else ``root/<name>-<timestamp>``."""
        if output_dir is not None:
            folder = cls(output_dir)
            if folder.sweep_yaml.exists():
                raise NettrainError(f"{folder.path} already holds a sweep; continue it with "
                                    f"nettrain sweep --resume {folder.path}, or set output.dir to a new folder")
        else:
            folder = cls(fresh_folder(root, name))
        try:
            folder.trials.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NettrainError(f"{folder.path}: cannot create the sweep folder ({e.strerror or e}); "
                                "set output.dir (or output.root) in the spec to a writable place") from None
        return folder

    @classmethod
    def open(cls, path: str | Path) -> "SweepFolder":
        """An existing sweep folder to resume."""
        folder = cls(path)
        if not folder.path.is_dir():
            raise NettrainError(f"{folder.path}: no such sweep folder; give the folder nettrain sweep printed")
        if not folder.sweep_yaml.is_file():
            raise NettrainError(f"{folder.path}: not a sweep folder (no sweep.yaml); give the folder nettrain sweep printed")
        return folder

    def write_spec(self, resolved: dict, source: str, overrides=()) -> None:
        header = f"# resolved from {source}"
        for o in overrides:
            header += f"\n#   --set {o}"
        write_text_atomic(self.sweep_yaml, header + "\n" + yaml.safe_dump(resolved, sort_keys=False,
                                                                             default_flow_style=None))


@dataclass
class TrialRecord:
    """One trial as results.json lists it; ``best`` and ``last`` are values of the sweep's metric."""

    trial: str
    status: str
    params: dict[str, Any]
    best: float | None = None
    best_epoch: int | None = None
    last: float | None = None
    epochs: int = 0
    run_dir: str = ""  # relative to the sweep folder
    error: str | None = None
    rows: list[dict] = field(default_factory=list, repr=False)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_record(folder: SweepFolder, trial: str, params: dict, metric: str, mode: str,
                 configured_epochs: int | None, finished: bool | None, error: str | None) -> TrialRecord:
    """A trial's record from its run folder's metrics; ``finished`` None when Tune's status is unknown."""
    run_dir = folder.trial_dir(trial)
    try:
        rows = read_metrics(run_dir / "metrics.jsonl")
    except NettrainError:
        rows = []
    scored = [(r.get("epoch"), r.get(metric)) for r in rows if _finite(r.get(metric))]
    best = best_epoch = last = None
    if scored:
        pick = max if mode == "max" else min
        best_epoch, best = pick(scored, key=lambda pair: pair[1])
        last = scored[-1][1]
    epochs = max((r["epoch"] for r in rows if isinstance(r.get("epoch"), int)), default=0)
    if error is not None:
        status = FAILED
    elif finished is False or (finished is None and not epochs):
        status = UNFINISHED
    elif configured_epochs is not None and epochs >= configured_epochs:
        status = COMPLETED
    else:
        status = STOPPED_EARLY
    return TrialRecord(trial=trial, status=status, params=dict(params), best=best, best_epoch=best_epoch, last=last,
                       epochs=epochs, run_dir=os.path.relpath(run_dir, folder.path), error=error, rows=rows)


def best_first(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Trials with a metric, best first; then the others in the order given."""
    scored = [r for r in records if r.best is not None]
    scored.sort(key=lambda r: -r.best if mode == "max" else r.best)
    return scored + [r for r in records if r.best is None]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def write_results(folder: SweepFolder, records: list[TrialRecord], name: str, metric: str, mode: str) -> None:
    """``results.json`` and ``results.csv``, best first (both replaced atomically)."""
    records = best_first(records, mode)
    best = records[0].trial if records and records[0].best is not None else None
    entries = [{k: v for k, v in asdict(r).items() if k != "rows"} for r in records]
    write_json(folder.results_json, {"sweep": name, "metric": metric, "mode": mode, "best_trial": best,
                                     "trials": entries})
    params = list(dict.fromkeys(k for r in records for k in r.params))
    columns = ["trial", "status", f"best_{metric}", "best_epoch", f"last_{metric}", "epochs", *params, "run_dir", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow([_csv_value(v) for v in (r.trial, r.status, r.best, r.best_epoch, r.last, r.epochs,
                                                 *(r.params.get(p) for p in params), r.run_dir, r.error)])
    write_text_atomic(folder.results_csv, buf.getvalue())


def best_config_text(config, record: TrialRecord, sweep_name: str, metric: str, base_dir: Path,
                     folder: SweepFolder) -> str:
    """The best trial's resolved config as YAML for ``nettrain train`` (a fresh run folder, the same data)."""
    resolved = config.resolved
    resolved["output"]["dir"] = None  # train into a new run folder, not the trial's
    data = resolved.get("data") or {}
    path = data.get("path")
    if path and not Path(path).expanduser().is_absolute() and (base_dir / path).exists():
        data["path"] = os.path.relpath(base_dir / path, folder.path.resolve())  # read from best.yaml's folder
    lines = [f"# best trial {record.trial} of sweep {sweep_name}: {metric} {record.best:.6g} at epoch {record.best_epoch}"]
    lines += [f"#   {k}: {json.dumps(v)}" for k, v in record.params.items()]
    lines.append(f"# train it: nettrain train {folder.best_yaml}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None)
