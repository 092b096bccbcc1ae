"""Past runs read back from their folders: the list ``nettrain runs`` prints and ``nettrain compare``.

A run folder (see :mod:`nettrain.runs`) holds ``config.yaml`` and ``metrics.jsonl`` (or
``metrics.csv``) and, once an epoch or a step is done, ``checkpoints/last.npz``. Everything
here is read from those files; nothing is written except the comparison plot.

Status, from what the folder shows:

* ``finished``: all of ``train.epochs`` done;
* ``early stopped``: fewer epochs, and early stopping had run out of patience;
* ``running``: fewer epochs and a file written within the last few epoch times (a guess:
  a run killed a moment ago reads as running for that long);
* ``stopped``: fewer epochs otherwise (Ctrl-C, a signal, a crash); resume it;
* ``no checkpoint``: stopped before its first checkpoint.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import NettrainError
from .runs import RunDir, read_metrics
from .treediff import changed_keys, flatten

# How deep below ROOT to look for run folders (runs/<name>/, runs/<group>/<name>/, ...).
SEARCH_DEPTH = 3
# A run that is not finished counts as running when its files changed within this many of its
# longest epoch times (at least RUNNING_MIN_SECONDS).
RUNNING_EPOCHS = 3
RUNNING_MIN_SECONDS = 120.0
_STAMP = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")
_SOURCE = re.compile(r"^# resolved from (.+)$")


@dataclass
class RunInfo:
    """One run folder as ``nettrain runs`` lists it."""

    path: Path
    name: str
    config: str  # the config file it was trained from (else its name: in the config)
    epochs_done: int
    epochs: int | None  # train.epochs
    monitor: str  # the metric best.npz follows (output.monitor, or its train_ stand-in)
    mode: str  # max or min
    best: float | None
    best_epoch: int | None
    status: str
    started: datetime | None
    seconds: float  # training time summed over the epochs done
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)  # the resolved config

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("rows", "settings")}
        out["path"] = str(self.path)
        out["started"] = self.started.isoformat(timespec="seconds") if self.started else None
        if rows:
            out["rows"] = self.rows
        return out


def is_run_folder(path: Path) -> bool:
    run = RunDir(path)
    return run.config_yaml.is_file() and (run.checkpoints.is_dir() or run.metrics_jsonl.is_file())


def find_runs(root: str | Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run folders at or below ``root`` (not inside another run), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise NettrainError(f"{root}: no such folder; give the folder that holds your runs "
                            "(output.root in the config, 'runs' by default)")
    found, frontier = [], [root]
    for _ in range(depth + 1):
        below = []
        for folder in frontier:
            if is_run_folder(folder):
                found.append(folder)
                continue
            try:
                below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                                and not p.name.startswith("."))
            except OSError:
                continue
        frontier = below
    return sorted(found)


def _read_config(run: RunDir) -> tuple[dict[str, Any], str]:
    """The run's resolved config and the file it came from (from config.yaml's first line)."""
    try:
        text = run.config_yaml.read_text(encoding="utf-8")
        settings = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}, ""
    match = _SOURCE.match(text.splitlines()[0]) if text else None
    return (settings if isinstance(settings, dict) else {}), (match.group(1).strip() if match else "")


def _started(run: RunDir) -> datetime | None:
    """The time stamp in a default run folder's name, else when summary.json (written once) was written."""
    match = _STAMP.search(run.path.name)
    if match:
        try:
            return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            pass
    for path in (run.summary_json, run.config_yaml):
        try:
            return datetime.fromtimestamp(path.stat().st_mtime)
        except OSError:
            continue
    return None


def _monitor(settings: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str]:
    output = settings.get("output") or {}
    name, mode = str(output.get("monitor") or "val_accuracy"), str(output.get("mode") or "max")
    if name.startswith("val_") and rows and all(r.get(name) is None for r in rows):
        name = "train_" + name[4:] if name in ("val_loss", "val_accuracy") else "train_accuracy"
    return name, mode


def _best(rows: list[dict[str, Any]], monitor: str, mode: str) -> tuple[float | None, int | None]:
    scored = [(r[monitor], r["epoch"]) for r in rows
              if isinstance(r.get(monitor), (int, float)) and math.isfinite(r[monitor])]
    if not scored:
        return None, None
    # the first epoch that reached the best value, as best.npz keeps it
    pick = max if mode == "max" else min
    value = pick(v for v, _ in scored)
    return value, next(e for v, e in scored if v == value)


def _status(run: RunDir, settings: dict[str, Any], rows: list[dict[str, Any]], epochs_done: int,
            epochs: int | None, now: float) -> str:
    from .checkpoint import read_meta
    from .errors import CheckpointError

    if epochs is not None and epochs_done >= epochs:
        return "finished"
    if not run.last.is_file():
        return "no checkpoint"
    try:
        meta = read_meta(run.last)
    except CheckpointError:
        return "damaged checkpoint"
    early = (settings.get("train") or {}).get("early_stopping")
    state = (meta.get("trainer") or {}).get("state") or {}
    if isinstance(early, dict) and not meta.get("batch") and \
            int(state.get("es_bad") or 0) >= int(early.get("patience") or 0) > 0:
        return "early stopped"
    longest = max((float(r.get("seconds") or 0.0) for r in rows), default=0.0)
    written = max((p.stat().st_mtime for p in (run.last, run.metrics_jsonl) if p.exists()), default=0.0)
    if now - written < max(RUNNING_MIN_SECONDS, RUNNING_EPOCHS * longest):
        return "running"
    return "stopped"


def read_run(path: str | Path, now: float | None = None) -> RunInfo:
    """What a run folder says about its run; NettrainError when it is not a run folder."""
    run = RunDir(path)
    if not is_run_folder(run.path):
        raise NettrainError(f"{run.path}: not a run folder (no config.yaml with checkpoints/ or metrics.jsonl); "
                            "give a folder that nettrain train printed as its run folder")
    settings, source = _read_config(run)
    rows = read_metrics(run.metrics_jsonl) if run.metrics_jsonl.exists() else read_metrics(run.metrics_csv)
    rows = [r for r in rows if isinstance(r.get("epoch"), int)]
    epochs_done = max((r["epoch"] for r in rows), default=0)
    epochs = (settings.get("train") or {}).get("epochs")
    epochs = int(epochs) if isinstance(epochs, (int, float)) else None
    monitor, mode = _monitor(settings, rows)
    best, best_epoch = _best(rows, monitor, mode)
    return RunInfo(
        path=run.path, name=run.path.name, config=source or str(settings.get("name") or ""),
        epochs_done=epochs_done, epochs=epochs, monitor=monitor, mode=mode, best=best, best_epoch=best_epoch,
        status=_status(run, settings, rows, epochs_done, epochs, time.time() if now is None else now),
        started=_started(run), seconds=sum(float(r.get("seconds") or 0.0) for r in rows),
        rows=rows, settings=settings,
    )


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    """Every run below ``root``, newest first."""
    runs = [read_run(p) for p in find_runs(root)]
    return sorted(runs, key=lambda r: (r.started or datetime.min, str(r.path)), reverse=True)


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for runs: the folder name, or as much of the path as tells two apart."""
    labels = [p.name for p in paths]
    for depth in range(2, 8):
        if len(set(labels)) == len(labels):
            break
        labels = ["/".join(p.parts[-depth:]) for p in paths]
    return labels


def config_differences(runs: Sequence[RunInfo]) -> dict[str, list[Any]]:
    """The config keys whose values differ among ``runs`` (train.epochs included), with each run's value."""
    keys: list[str] = []
    for other in runs[1:]:
        keys += [k for k in changed_keys(runs[0].settings, other.settings) if k not in keys]
    flat = [flatten(r.settings) for r in runs]
    out: dict[str, list[Any]] = {}
    for key in keys:
        # a changed list or section is shown by its leaves
        every_leaf = dict.fromkeys(k for f in flat for k in f)
        leaves = [k for k in every_leaf if k == key or k.startswith((key + ".", key + "["))]
        for leaf in leaves:
            values = [f.get(leaf) for f in flat]
            if any(v != values[0] for v in values[1:]):
                out[leaf] = values
    return out


@dataclass
class Comparison:
    runs: list[RunInfo]
    labels: list[str]
    differences: dict[str, list[Any]]
    plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [{"label": label, **run.to_dict(rows=True)} for label, run in zip(self.labels, self.runs)],
            "config_differences": self.differences,
            "plot": str(self.plot) if self.plot else None,
        }


def compare_runs(paths: Sequence[str | Path], plot: str | Path | None = None) -> Comparison:
    """Read ``paths`` as runs; with ``plot``, write their curves there (None without matplotlib)."""
    from .plots import plot_runs

    if not paths:
        raise NettrainError("name at least one run folder to compare")
    runs = [read_run(p) for p in paths]
    labels = unique_labels([r.path for r in runs])
    comparison = Comparison(runs, labels, config_differences(runs))
    if plot is not None:
        try:
            comparison.plot = plot_runs(dict(zip(labels, (r.rows for r in runs))), plot)
        except OSError as e:
            raise NettrainError(f"{plot}: cannot write the plot ({e.strerror or e}); "
                                "give another --plot path") from None
    return comparison
