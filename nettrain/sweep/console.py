"""Terminal output of ``nettrain sweep``: progress lines while it runs, a table of the trials at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import SweepProgress
from .results import COMPLETED, FAILED, STOPPED_EARLY, UNFINISHED

STATUS_STYLE = {COMPLETED: "green", STOPPED_EARLY: "yellow", FAILED: "red", UNFINISHED: "dim"}


def shown(value: Any) -> str:
    """A parameter value, short: floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in params.items())


class ConsoleSweepProgress(SweepProgress):
    """A :class:`nettrain.sweep.SweepProgress` that prints one line per event (epochs unless quiet)."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.metric = ""
        self.folder: Path | None = None
        self.epochs: dict[str, int | None] = {}
        self.done: dict[str, int] = {}

    def starting_ray(self, address: str | None) -> None:
        where = f"connecting to Ray at {escape(address)}" if address else "starting Ray on this machine"
        self.console.print(f"{where} (takes a few seconds) ...")

    def ray_ready(self, seconds: float, cpus: float) -> None:
        self.console.print(f"Ray ready in {seconds:.1f} s ({cpus:g} CPUs)")

    def sweep_start(self, info: dict[str, Any]) -> None:
        self.metric, self.folder = info["metric"], Path(info["folder"])
        grid = f" ({info['samples']} samples x {info['grid_points']} grid points)" if info["grid_points"] > 1 else ""
        at_once = f"{info['concurrent']} at a time" if info["concurrent"] else "as many at a time as the CPUs allow"
        verb = "resuming sweep" if info["resumed"] else "sweep"
        self.console.print(f"{verb} [bold]{escape(info['name'])}[/bold]: {info['trials']} trials{grid}, "
                           f"{info['search']} search, {info['scheduler']} scheduler, {info['metric']} ({info['mode']}), "
                           f"{info['cpus']} CPU(s) per trial, {at_once}")
        self.console.print(f"sweep folder [bold]{escape(str(self.folder))}[/bold]")

    def trial_start(self, trial: str, params: dict[str, Any], epochs: int | None, done: int = 0) -> None:
        self.epochs[trial] = epochs
        how = f"continues after epoch {done}" if done else "started"
        self.console.print(f"trial {trial} {how}: {escape(params_text(params))}")

    def trial_result(self, trial: str, row: dict[str, Any]) -> None:
        self.done[trial] = row.get("epoch", 0)
        if self.quiet:
            return
        of = f"/{self.epochs[trial]}" if self.epochs.get(trial) else ""
        parts = [f"trial {trial} epoch {row.get('epoch')}{of}"]
        for key in dict.fromkeys([self.metric, "train_loss", "val_loss", "val_accuracy"]):
            if isinstance(row.get(key), (int, float)):
                parts.append(f"{key} {row[key]:.4f}")
        if isinstance(row.get("seconds"), (int, float)):
            parts.append(f"{row['seconds']:.1f}s")
        self.console.print("  ".join(parts))

    def trial_end(self, trial: str, status: str, message: str = "") -> None:
        style = STATUS_STYLE.get(status, "")
        after = f" after epoch {self.done[trial]}" if status == STOPPED_EARLY and trial in self.done else ""
        why = f": {escape(message)}" if message else ""
        self.console.print(f"trial {trial} [{style}]{status}[/{style}]{after}{why}")

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]note:[/yellow] {escape(message)}")


def _wide_enough(console: Console, table: Table) -> Console:
    """The console, or one as wide as the table when it is wider (so no column is cut)."""
    from rich.measure import Measurement

    width = Measurement.get(console, console.options.update_width(10_000), table).maximum
    return console if width <= console.width else Console(width=width, highlight=False, soft_wrap=True)


def print_trials_table(outcome, console: Console | None = None) -> None:
    """Every trial, best first: status, the best and last metric, epochs and the sampled values."""
    console = console or Console(highlight=False, soft_wrap=True)
    metric = outcome.metric
    params = list(dict.fromkeys(k for r in outcome.records for k in r.params))
    table = Table(title=f"sweep {outcome.name}: {metric} ({outcome.mode}), best first", title_justify="left")
    for column in ("#", "trial", "status", f"best {metric}", "epoch", "last", "epochs", *params):
        table.add_column(escape(column), justify="right" if column not in ("trial", "status") else "left")
    for i, r in enumerate(outcome.records, 1):
        style = STATUS_STYLE.get(r.status, "")
        best = "-" if r.best is None else f"{r.best:.4f}"
        last = "-" if r.last is None else f"{r.last:.4f}"
        table.add_row(str(i), r.trial, f"[{style}]{r.status}[/{style}]", best, str(r.best_epoch or "-"), last,
                      str(r.epochs), *(escape(shown(r.params.get(p, "-"))) for p in params))
    _wide_enough(console, table).print(table)
    for r in outcome.records:
        if r.error:
            console.print(f"[red]trial {r.trial} failed:[/red] {escape(r.error)}")


def print_sweep_end(outcome, console: Console | None = None) -> None:
    """The table, the best trial and what to do next."""
    console = console or Console(highlight=False, soft_wrap=True)
    print_trials_table(outcome, console)
    finished = sum(1 for r in outcome.records if r.status != UNFINISHED)
    if outcome.best_yaml is not None:
        best = outcome.records[0]
        console.print(f"best: trial {best.trial}, {outcome.metric} {best.best:.4f} at epoch {best.best_epoch} "
                      f"({escape(params_text(best.params))})")
        console.print(f"best config: {escape(str(outcome.best_yaml))}; train it with: "
                      f"nettrain train {escape(str(outcome.best_yaml))}")
    console.print(f"sweep folder: {escape(str(outcome.folder))} ({finished} of {outcome.total} trials finished; "
                  "results.csv, results.json)")
