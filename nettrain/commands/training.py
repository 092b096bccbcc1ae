"""The pieces of ``nettrain train`` that are not option parsing: which config to train, and how to resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .common import usage

# Each train flag and the --set it stands for.
FLAG_OVERRIDES = {"epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.optimizer.lr",
                  "seed": "train.seed"}


def train_overrides(set_: Optional[list[str]], tensorboard: bool = False, **flags) -> list[str]:
    """``--set`` values, then one override per flag given (``--epochs 3`` is ``--set train.epochs=3``)."""
    overrides = list(set_ or [])
    overrides += [f"{FLAG_OVERRIDES[name]}={value}" for name, value in flags.items() if value is not None]
    return overrides + (["output.tensorboard=true"] if tensorboard else [])


def set_threads(threads: Optional[int]) -> None:
    """``--threads N``: the worker pool's size, as NETTRAIN_THREADS=N (as ``bench --threads``)."""
    if threads is not None:
        os.environ["NETTRAIN_THREADS"] = str(threads)


def train_config(config: Optional[Path], resume: Optional[Path], overrides: list[str]):
    """The config to train: CONFIG's, or with ``--resume`` alone the run folder's own ``config.yaml``."""
    from ..config import load_config
    from ..training.resume import load_run_config

    if config is not None:
        return load_config(config, overrides)
    if resume is None:
        raise usage("give a CONFIG to train, or --resume RUN_DIR to continue a run")
    return load_run_config(resume, overrides)


def resume_command(run_dir: Path) -> str:
    return f"nettrain train --resume {run_dir}"


def print_aborted(trainer) -> None:
    """A second Ctrl-C: what is left and how to continue."""
    typer.echo("aborted; checkpoints already written are intact (they are replaced atomically)", err=True)
    if trainer is not None and trainer.run.last.exists():
        typer.echo(f"resume with: {resume_command(trainer.run.path)}", err=True)
