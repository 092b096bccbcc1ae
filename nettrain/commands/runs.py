"""``nettrain runs [ROOT]`` lists past runs; ``nettrain compare RUN...`` puts runs side by side."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from .common import check_choice, run_or_exit


def runs_command(
    root: Path = typer.Argument(Path("runs"), help="the folder that holds the runs (output.root; default runs)"),
    format: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Past runs, newest first: name, config, epochs done, best metric, status, started."""
    from ..runs_index import list_runs

    def make():
        check_choice("--format", format, ("table", "json"))
        return list_runs(root)

    runs = run_or_exit(make)
    if format == "json":
        typer.echo(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    if not runs:
        typer.echo(f"no runs in {root}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {root}, newest first", title_justify="left")
    for column in ("run", "config", "epochs", "best", "status", "started"):
        table.add_column(column)
    for r in runs:
        name = str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path)
        table.add_row(name, r.config or "-", _epochs(r), _best(r), r.status, started(r.started))
    Console(highlight=False, soft_wrap=True).print(table)


def compare_command(
    runs: list[Path] = typer.Argument(..., help="run folders"),
    format: str = typer.Option("table", "--format", help="table or json"),
    plot: Path = typer.Option(Path("compare.png"), "--plot", help="where to write one plot of all their curves"),
    no_plot: bool = typer.Option(False, "--no-plot", help="write no plot"),
) -> None:
    """Runs side by side: status, epochs, best and last metrics, time, the config keys that differ; one plot."""
    from ..plots import PLOT_EXTRA
    from ..runs_index import compare_runs

    def make():
        check_choice("--format", format, ("table", "json"))
        return compare_runs(runs, None if no_plot else plot)

    comparison = run_or_exit(make)
    if not no_plot and comparison.plot is None:
        typer.echo(f"note: no plot without matplotlib; {PLOT_EXTRA} adds it", err=True)
    if format == "json":
        typer.echo(json.dumps(comparison.to_dict(), indent=2))
        return
    _print_comparison(comparison)
    if comparison.plot is not None:
        typer.echo(f"curves of all runs: {comparison.plot}")


def register(app: typer.Typer) -> None:
    app.command("runs")(runs_command)
    app.command("compare")(compare_command)


# --------------------------------------------------------------------------- formatting

def started(when: datetime | None) -> str:
    """``2025-01-31 14:05``."""
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M")


def _epochs(r) -> str:
    return f"{r.epochs_done}/{r.epochs}" if r.epochs is not None else str(r.epochs_done)


def _value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if name.endswith("accuracy") else f"{value:.4g}"
    return str(value)


def _best(r) -> str:
    if r.best is None:
        return "-"
    return f"{r.monitor} {_value(r.monitor, r.best)} (epoch {r.best_epoch})"


def _print_comparison(comparison) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    runs, labels = comparison.runs, comparison.labels
    table = Table(title="runs side by side", title_justify="left")
    table.add_column("")
    for label in labels:
        table.add_column(escape(label), justify="right")

    def last(r, key):
        return _value(key, r.rows[-1].get(key)) if r.rows else "-"

    rows = [
        ("config", [r.config or "-" for r in runs]),
        ("status", [r.status for r in runs]),
        ("epochs", [_epochs(r) for r in runs]),
        ("best", [_best(r) for r in runs]),
    ]
    rows += [(f"last {key.replace('_', ' ')}", [last(r, key) for r in runs])
             for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")]
    rows.append(("training time", [f"{r.seconds:,.1f} s" for r in runs]))
    for i, (name, cells) in enumerate(rows):
        last_row = i == len(rows) - 1
        table.add_row(name, *(escape(c) for c in cells), end_section=last_row and bool(comparison.differences))
    for key, values in comparison.differences.items():
        table.add_row(escape(key), *(escape(json.dumps(v)) for v in values))
    Console(highlight=False, soft_wrap=True).print(table)
    if len(runs) > 1 and not comparison.differences:
        typer.echo("the runs have the same config")
