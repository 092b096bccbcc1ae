"""What every command shares: errors as one line on stderr, never a traceback."""

from __future__ import annotations

from contextlib import contextmanager

import typer

SET_HELP = "override a config value (repeatable): --set train.optimizer.lr=0.05 --set model.layers[0].filters=32"


def print_problems(e) -> None:
    """A NettrainError on stderr as one line (every problem of a ConfigError on its own line)."""
    from ..distributed.launch import launched_rank

    if launched_rank() != 0:  # under mpiexec every rank meets the same error: rank 0 alone says it
        return
    for line in getattr(e, "problems", None) or [str(e)]:
        typer.echo(f"error: {line}", err=True)


def fail(e) -> None:
    """Print a NettrainError as one line (every problem of a ConfigError on its own line) and exit."""
    print_problems(e)
    raise typer.Exit(e.exit_code)


def run_or_exit(fn, *args, **kwargs):
    """Call ``fn``; a NettrainError becomes its problems on stderr and its exit code, never a traceback."""
    from ..errors import NettrainError

    try:
        return fn(*args, **kwargs)
    except NettrainError as e:
        fail(e)


@contextmanager
def errors_as_lines(memory_message: str):
    """Inside: a NettrainError becomes its problems on stderr and its exit code, a MemoryError
    ``memory_message`` and exit code 2, never a traceback."""
    from ..errors import NettrainError

    try:
        yield
    except NettrainError as e:
        fail(e)
    except MemoryError:
        out_of_memory(memory_message)


def out_of_memory(message: str) -> None:
    """A MemoryError as one line and exit code 2, like a NettrainError."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def usage(message: str):
    """A NettrainError for a bad option value, to raise inside :func:`run_or_exit`."""
    from ..errors import NettrainError

    return NettrainError(message)


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :func:`usage` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise usage(f"{option} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")


def rank_zero_result(code: int, result):
    """What a command run on every rank hands back: rank 0 goes on with ``result``, other ranks exit."""
    if result is None:
        raise typer.Exit(code)
    return result

