"""The ``nettrain`` command line: a thin layer over the library.

Every command catches :class:`nettrain.errors.NettrainError`, prints its message
as one line on stderr and exits with its exit code (2), never a traceback.
"""

from __future__ import annotations

import typer

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative CNN/RNN training in NumPy.")


@app.callback()
def root() -> None:
    """nettrain: describe a network in YAML, then summarize, train and evaluate it."""


@app.command()
def version() -> None:
    """Print the nettrain version."""
    typer.echo(f"nettrain {__version__}")


def main() -> None:
    app()
