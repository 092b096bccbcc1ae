"""What to export: a built model with its weights, config and data normalisation, from any SOURCE.

SOURCE is a run folder (its ``checkpoints/best.npz`` or ``last.npz``), a checkpoint
``.npz``, a ``.safetensors`` written by ``nettrain export``, or a config ``.yaml``
(the weights :func:`nettrain.builder.build_model` gives for its ``train.seed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import ExportError

CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass
class ExportSource:
    """A model ready to export, in inference mode, with what its files should say about it."""

    model: Any
    config: Any
    config_text: str
    origin: str  # the file the weights came from, or "<config> (initial weights, seed s)"
    classes: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    epoch: int = 0
    config_path: str = ""

    @property
    def name(self) -> str:
        return self.config.run_name

    @property
    def normalize(self) -> str:
        data = self.config.data
        return getattr(data, "normalize", "per_channel") if data is not None else "none"


def run_checkpoint(folder: Path, which: str) -> Path:
    """``folder/checkpoints/<which>.npz`` (or ``folder/<which>.npz``); best falls back to last, as eval does."""
    if which not in ("best", "last"):
        raise ExportError(f"--checkpoint must be best or last, got {which!r}")
    names = ("best", "last") if which == "best" else ("last",)
    for name in names:
        for place in (folder / "checkpoints", folder):
            if (place / f"{name}.npz").is_file():
                return place / f"{name}.npz"
    raise ExportError(f"{folder}: no checkpoints/{which}.npz in this folder; give a run folder, a checkpoint, "
                      "or a config")


def load_source(source: str | Path, which: str = "best") -> ExportSource:
    """Read SOURCE (see the module doc) into an :class:`ExportSource`."""
    path = Path(source)
    if path.is_dir():
        return _from_trained(run_checkpoint(path, which))
    if not path.exists():
        raise ExportError(f"{path}: no such run folder, checkpoint or config")
    if path.suffix.lower() in CONFIG_SUFFIXES:
        return _from_config(path)
    return _from_trained(path)


def _from_config(path: Path) -> ExportSource:
    from ..builder import build_model
    from ..config import load_config

    config = load_config(path)
    model = build_model(config)
    model.cast(np.float32)
    return ExportSource(model, config, config.to_yaml(), f"{path} (initial weights, seed {config.train.seed})",
                        config_path=str(path.resolve()))


def _from_trained(path: Path) -> ExportSource:
    from ..evaluate import load_trained

    trained = load_trained(path)
    ckpt = trained.checkpoint
    return ExportSource(trained.model, trained.config, ckpt.config_text, str(trained.path), list(ckpt.classes),
                        ckpt.mean, ckpt.std, ckpt.epoch, ckpt.config_path)
