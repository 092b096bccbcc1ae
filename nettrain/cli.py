"""The ``nettrain`` command line: a thin layer over the library.

Every command catches :class:`nettrain.errors.NettrainError`, prints its message
as one line on stderr and exits with its exit code (2), never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
import typer.core

from . import __version__
from .commands.common import fail as _fail, out_of_memory as _out_of_memory, print_problems as _print_problems
from .commands.common import SET_HELP, run_or_exit, usage as _usage
from .commands import bench as bench_commands, evaluation as evaluation_commands
from .commands import export as export_commands, runs as runs_commands, sweep as sweep_commands
from .distributed.launch import is_parallel_launch
from .distributed.supervise import supervise
from .heap import keep_freed_memory

# Placeholders for options whose name does not say what they take.
METAVARS = {"set_": "KEY=VALUE"}


class HelpGroup(typer.core.TyperGroup):
    """Command help as click and argparse print it: ``--format FORMAT``, ``--set KEY=VALUE``,
    flags without a placeholder, rather than typer's type names (``--set <list[str]>``,
    ``--help <bool>`` in typer 0.29's rich help, hence the plain help below)."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", ()):
            flag = param.param_type_name == "option" and (param.is_flag or param.count)
            if param.metavar is None and not flag:
                param.metavar = METAVARS.get(param.name, param.name.upper())
        return command


HELP = {"cls": HelpGroup, "rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative CNN/RNN training in NumPy.", **HELP)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nettrain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """nettrain: describe a network in YAML, then summarize, train and evaluate it."""


@app.command()
def version() -> None:
    """Print the nettrain version."""
    typer.echo(f"nettrain {__version__}")


data_app = typer.Typer(no_args_is_help=True, help="Get data sets.", **HELP)
app.add_typer(data_app, name="data")


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="fashion-mnist, mnist or cifar10"),
    dest: Path = typer.Option(Path("data"), "--dest", help="folder that receives <name>/"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="a mirror to download from: a URL or a local folder"),
) -> None:
    """Download a data set into DEST/NAME/, checking every file's checksum."""
    from .download import download
    from .errors import NettrainError

    try:
        folder = download(name, dest, base_url=base_url, progress=True)
    except NettrainError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(f"{name}: ready in {folder}")


@app.command()
def check(
    configs: list[Path] = typer.Argument(..., help="YAML configs to validate and build"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Validate and build configs without training; print every problem of each file. Exit 0 or 2."""
    from .builder import build_model
    from .config import load_config
    from .errors import NettrainError

    failed = 0
    for path in configs:
        try:
            model = build_model(load_config(path, list(set_ or [])))
        except NettrainError as e:
            failed = e.exit_code
            _print_problems(e)
            continue
        total = model.param_count() + model.buffer_count()
        typer.echo(f"ok: {path}: {len(model.layers)} layers, {total:,} params ({model.param_count():,} trainable)")
    if failed:
        raise typer.Exit(failed)


@app.command()
def summarize(
    config: Path = typer.Argument(..., help="the YAML config to summarize"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    format: str = typer.Option("table", "--format", help="table, json or csv"),
    stats: bool = typer.Option(False, "--stats", help="add each layer's activation mean/std on one random batch"),
    batch: int = typer.Option(8, "--batch", min=1, help="batch size of the --stats forward pass"),
    depth: Optional[int] = typer.Option(None, "--depth", min=0,
                                        help="show nested layers down to this depth (0: residual blocks collapsed)"),
) -> None:
    """Layers, output shapes (HxWxC), parameters, MACs per sample and memory of a config's model."""
    from .config import load_config
    from .summary import summarize_config

    def make():
        if format not in ("table", "json", "csv"):
            raise _usage(f"--format must be table, json or csv, got {format!r}")
        summary = summarize_config(load_config(config, list(set_ or [])), stats=stats, stats_batch=batch)
        return summary.up_to_depth(depth)

    summary = run_or_exit(make)
    if format == "json":
        import json

        typer.echo(json.dumps(summary.to_dict(), indent=2))
    elif format == "csv":
        import csv
        import sys

        csv.writer(sys.stdout, lineterminator="\n").writerows(_csv_rows(summary))
    else:
        _print_summary(summary)


def _csv_rows(summary):
    from .summary import summary_csv_rows

    return summary_csv_rows(summary)


def _wide_enough(table):
    """A console at least as wide as the table, so numbers are never cut to 'Ellipsis'."""
    from rich.console import Console

    from rich.measure import Measurement

    console = Console()
    width = Measurement.get(console, console.options.update_width(10_000), table).maximum
    return console if width <= console.width else Console(width=width)


def _print_summary(summary) -> None:
    from rich.table import Table
    from rich.text import Text

    stats = summary.stats_batch is not None
    table = Table(title=f"{summary.name}: input {summary.input_shape}", title_justify="left")
    for column in ("#", "name", "type", "output", "params", "MACs") + (("mean", "std") if stats else ()):
        table.add_column(column, justify="right" if column in ("params", "MACs", "mean", "std") else "left")
    for row in summary.rows:
        cells = [row.index, "  " * row.depth + row.name, row.type, row.output_shape, f"{row.params:,}", f"{row.macs:,}"]
        if stats:
            cells += ["-" if row.mean is None else f"{row.mean:.3g}", "-" if row.std is None else f"{row.std:.3g}"]
        table.add_row(*(Text(c, style="dim" if row.depth else "") for c in cells))
    console = _wide_enough(table)
    console.print(table)
    m = summary.memory_mib
    lines = [
        f"total params: {summary.total_params:,}",
        f"trainable params: {summary.trainable_params:,}",
        f"non-trainable params: {summary.non_trainable_params:,}",
        f"MACs per sample: {summary.total_macs:,} ({summary.total_macs / 1e6:.2f} M)",
        f"memory (MiB, float32, batch {summary.batch_size}):",
        f"  parameters {m['parameters']:.2f}, gradients {m['gradients']:.2f}, "
        f"optimizer state {m['optimizer_state']:.2f} ({summary.optimizer_slots} slot(s) per parameter)",
        f"  inputs {m['inputs']:.2f}; activations {m['activations_forward']:.2f} forward; training: outputs kept "
        f"{m['outputs_kept']:.2f}, cached for backward {m['cached_for_backward']:.2f}, gradients in backward "
        f"{m['backward_gradients']:.2f}, kernel scratch {m['kernel_scratch']:.2f}",
        f"  total for training {m['total_training']:.2f}",
    ]
    if stats:
        lines.append(f"activation mean/std: one forward pass (training=False) on {summary.stats_batch} N(0, 1) samples")
    for line in lines:
        typer.echo(line)


@app.command("layers")
def layers_command(
    format: str = typer.Option("table", "--format", help="table, markdown or json"),
) -> None:
    """Every layer type with its fields, their types and defaults (read from the schemas)."""
    from .config.reference import layer_reference, layers_markdown

    if format not in ("table", "markdown", "json"):
        _fail(_usage(f"--format must be table, markdown or json, got {format!r}"))
    reference = layer_reference()
    if format == "json":
        import json

        typer.echo(json.dumps(reference, indent=2))
    elif format == "markdown":
        typer.echo(layers_markdown(reference))
    else:
        _print_layers(reference)


def _print_layers(reference) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .config.reference import COMMON_FIELDS_NOTE

    table = Table(title="layer types", title_justify="left")
    for column in ("type", "field", "accepts", "default"):
        table.add_column(column)
    for layer in reference:
        fields = layer["fields"] or [{"name": "-", "type": "", "default": ""}]
        for i, f in enumerate(fields):
            table.add_row(Text(layer["type"] if i == 0 else "", style="bold"), Text(f["name"]),
                          Text(f["type"]), Text(f["default"]), end_section=i == len(fields) - 1)
    Console().print(table)
    typer.echo(COMMON_FIELDS_NOTE.replace("`", ""))
    for layer in reference:
        for f in layer["fields"]:
            if f["doc"]:
                typer.echo(f"{layer['type']}.{f['name']}: {f['doc'].replace('`', '')}")


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="the YAML config to train (optional with --resume)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="continue the run in this folder from its last.npz"),
    allow_changes: bool = typer.Option(False, "--allow-changes",
                                       help="resume even with another architecture or schedule length"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="train.epochs: epochs in total"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="train.batch_size"),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="train.optimizer.lr"),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="train.seed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="worker threads (sets NETTRAIN_THREADS); default: one per core"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write TensorBoard logs into RUN/tensorboard/"),
) -> None:
    """Train a config; write a run folder with checkpoints and metrics. Continue one with --resume RUN_DIR."""
    from .commands.training import print_aborted, resume_command, set_threads, train_config, train_overrides
    from .errors import NettrainError
    from .console import ConsoleReporter
    from .training import Trainer

    set_threads(threads)
    overrides = train_overrides(set_, tensorboard, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if is_parallel_launch():  # one rank of several: mpiexec -n N nettrain train
        from .distributed import commands

        raise typer.Exit(commands.train(config, overrides, resume, quiet, allow_changes))
    trainer = None
    try:
        cfg = train_config(config, resume, overrides)
        reporter = ConsoleReporter(quiet=quiet, log_every=cfg.train.log_every)
        trainer = Trainer(cfg, resume=resume, reporter=reporter, allow_changes=allow_changes)
        result = trainer.fit()
    except NettrainError as e:
        _fail(e)
    except MemoryError:
        _out_of_memory(f"{config or resume}: the model or the data does not fit in memory; "
                       "lower train.batch_size, layer sizes or data.subset")
    except KeyboardInterrupt:  # a second Ctrl-C: checkpoints are written atomically, so none is broken
        print_aborted(trainer)
        raise typer.Exit(130) from None
    out = reporter.console
    if result.best_value is not None:
        out.print(f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}")
    if result.stopped == "interrupted":
        epoch, batch = result.cursor
        at = f"epoch {epoch + 1}, batch {batch}" if batch else f"the end of epoch {epoch}"
        typer.echo(f"interrupted at {at}; saved {result.run_dir / 'checkpoints' / 'last.npz'}", err=True)
        typer.echo(f"resume with: {resume_command(result.run_dir)}", err=True)
        raise typer.Exit(result.exit_code)
    out.print(f"run folder: {result.run_dir}")


evaluation_commands.register(app)
bench_commands.register(app)
runs_commands.register(app)
sweep_commands.register(app)
export_commands.register(app)


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> None:
    """One BLAS thread unless the user sets one of the variables.

    nettrain runs its parallel work (batch chunks of convolutions, pooling, recurrent
    layers) on its own pool of ``NETTRAIN_THREADS`` threads (default: one per core),
    each calling a single-threaded BLAS. Measured on a shared 2-core machine: OpenBLAS's
    spinning worker threads turned a 48 s quickstart run into 7 minutes when other
    processes competed for the cores, while the pool just shares them. It must run
    before NumPy is imported, which is why the CLI imports NumPy lazily.
    """
    for var in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(var, "1")


def main() -> None:
    supervise()  # under mpiexec: a watcher that names a rank killed by a signal
    limit_blas_threads()
    keep_freed_memory()
    app()


if __name__ == "__main__":  # python -m nettrain.cli
    main()
