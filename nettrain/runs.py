"""Run directories: everything a training run leaves behind, in one folder.

::

    runs/<config-name>-<YYYYmmdd-HHMMSS>/
        config.yaml          the resolved config (overrides applied)
        summary.json         the model summary (layers, shapes, parameter counts)
        metrics.csv          one row per epoch
        metrics.jsonl        the same rows as JSON lines
        curves.png           loss and accuracy curves (when matplotlib is installed)
        checkpoints/last.npz the state after the latest epoch (or interruption)
        checkpoints/best.npz the state at the best ``output.monitor`` value

Metric rows are appended, flushed and fsynced once per epoch; a resumed run first
cuts both files back to the checkpoint's epoch, so no row is duplicated or lost.
Every whole-file write goes through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from .errors import TrainingError

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "img_per_s"]
# Columns that measure the machine rather than the training; reruns differ only here.
TIME_COLUMNS = ("seconds", "img_per_s")


def _write_error(path: Path, e: OSError) -> TrainingError:
    return TrainingError(f"{path}: cannot write ({e.strerror or e}); check that the output folder is writable "
                         "(set output.dir to another place) and the disk has space")


# The temporary files of write_text_atomic, save_checkpoint and plot_curves; a killed
# process leaves them behind, and the next run in the folder removes them.
_TEMPORARY = re.compile(r"^\.(config\.yaml|summary\.json|metrics\.csv|metrics\.jsonl|last\.npz|best\.npz|curves)"
                        r"\.\d+\.tmp(\.png)?$")


def replace_atomically(path: str | Path, write, binary: bool = False) -> None:
    """Write ``path`` by ``write(file)`` into a temporary file in the same folder, fsync, ``os.replace``.

    A crash leaves the old file or the new one, never a mix. On OSError the temporary file is
    removed and the error re-raised for the caller to word.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temporary file in the same folder."""
    try:
        replace_atomically(path, lambda f: f.write(text))
    except OSError as e:
        raise _write_error(Path(path), e) from None


def timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def fresh_folder(root: str | Path, name: str, now: datetime | None = None) -> Path:
    """``root/<name>-<timestamp>``, with ``-2``, ``-3``... when that exists (two started in the same second)."""
    base = Path(root) / f"{name}-{timestamp(now)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


class RunDir:
    """The paths of one run's folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.npz"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.npz"

    @property
    def config_yaml(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def curves_png(self) -> Path:
        return self.path / "curves.png"

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    def remove_temporaries(self) -> None:
        """Delete half-written temporary files that a killed process left in the folder."""
        for folder in (self.path, self.checkpoints):
            try:
                leftovers = [p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file()]
            except OSError:
                continue
            for p in leftovers:
                try:
                    p.unlink()
                except OSError:
                    pass

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, config_name: str, output_dir: str | Path | None = None, root: str | Path = "runs",
               now: datetime | None = None) -> "RunDir":
        """A fresh run folder: ``output_dir`` if given, else ``root/<config_name>-<timestamp>``.

        An ``output_dir`` that already holds a checkpoint is refused (resume it instead),
        so a new run never overwrites another run's metrics.
        """
        if output_dir is not None:
            run = cls(output_dir)
            if run.has_checkpoint():
                raise TrainingError(f"{run.path} already holds a run (checkpoints/last.npz); continue it with "
                                    f"--resume {run.path}, or set output.dir to a new folder")
        else:
            run = cls(fresh_folder(root, config_name, now))
        try:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainingError(f"{run.path}: cannot create the run folder ({e.strerror or e}); "
                                "set output.dir (or output.root) to a writable place") from None
        run.remove_temporaries()
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run folder to resume; it must hold ``checkpoints/last.npz``."""
        run = cls(path)
        if not run.path.is_dir():
            raise TrainingError(f"{run.path}: no such run folder to resume; give the folder that "
                                "nettrain train printed as its run folder")
        if not run.has_checkpoint():
            raise TrainingError(f"{run.path}: no checkpoints/last.npz to resume from "
                                "(the run stopped before its first checkpoint; start it again without --resume)")
        run.remove_temporaries()
        return run


# --------------------------------------------------------------------------- metrics

def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # repr round-trips, so reruns compare exactly
    return str(value)


def _parse_value(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cut_back(path: Path, size: int) -> None:
    """Truncate ``path`` to ``size`` bytes: a write that failed half-way (full disk) leaves no torn row."""
    try:
        os.truncate(path, size)
    except OSError:
        pass


class MetricsLog:
    """``metrics.csv`` and ``metrics.jsonl``: one row per finished epoch."""

    def __init__(self, run: RunDir, columns: Iterable[str]):
        self.run = run
        self.columns = list(columns)

    def _append(self, path: Path, text: str, header: str | None = None) -> None:
        try:
            size = path.stat().st_size if path.exists() else 0
        except OSError as e:
            raise _write_error(path, e) from None
        try:
            with open(path, "a", encoding="utf-8", newline="") as f:
                if size == 0 and header is not None:
                    f.write(header)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            _cut_back(path, size)
            raise _write_error(path, e) from None

    def _csv_line(self, values: Iterable[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(list(values))
        return buf.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        """Append one epoch's row to both files (flushed and fsynced)."""
        self._append(self.run.metrics_csv, self._csv_line(_format_value(row.get(c)) for c in self.columns),
                     header=self._csv_line(self.columns))
        record = {c: _json_value(row.get(c)) for c in self.columns}
        self._append(self.run.metrics_jsonl, json.dumps(record) + "\n")

    def truncate(self, epochs: int) -> list[dict[str, Any]]:
        """Keep the rows of epochs ``1..epochs`` only (resume); returns the rows kept.

        The CSV is rewritten with this log's columns, so a resumed run that reports
        another metric still writes aligned rows.
        """
        rows = [r for r in read_metrics(self.run.metrics_jsonl) if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs]
        if not rows and self.run.metrics_csv.exists():
            rows = [r for r in read_metrics(self.run.metrics_csv) if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs]
        header = self._csv_line(self.columns)
        lines = [self._csv_line(_format_value(r.get(c)) for c in self.columns) for r in rows]
        write_text_atomic(self.run.metrics_csv, header + "".join(lines))
        write_text_atomic(self.run.metrics_jsonl,
                          "".join(json.dumps({c: _json_value(r.get(c)) for c in self.columns}) + "\n" for r in rows))
        return rows


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` or ``metrics.jsonl`` as dicts (numbers parsed, empty -> None)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path}: cannot read metrics ({e})") from None
    if path.suffix == ".jsonl":
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                break  # a torn last line from a crash: everything before it is sound
        return rows
    reader = csv.DictReader(io.StringIO(text))
    return [{k: _parse_value(v or "") for k, v in row.items()} for row in reader]


# --------------------------------------------------------------------------- curves

def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss and accuracy per epoch (train and validation) as a PNG; None without matplotlib."""
    from .plots import plot_runs

    try:
        return plot_runs({"": rows}, path)
    except OSError as e:
        raise _write_error(Path(path), e) from None


# --------------------------------------------------------------------------- summary

def model_summary(model, config=None) -> dict[str, Any]:
    """The model summary (layers, shapes, parameter counts, memory) as JSON-ready data."""
    from .summary import summarize, summarize_config

    summary = summarize_config(config, model) if config is not None else summarize(model)
    return summary.to_dict()


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
