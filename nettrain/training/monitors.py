"""Watching one metric across epochs: the best checkpoint and early stopping."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError


def improves(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` min or max).

    A NaN or infinite value never improves; any finite value improves on no best yet.
    """
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    # written as Keras writes it (value -/+ min_delta against best), so ties round alike
    return value + min_delta < best if mode == "min" else value - min_delta > best


def monitored_metric(name: str, where: str, top_ks=(), has_validation: bool = True) -> tuple[str, str | None]:
    """The row column to watch for ``name`` (given at ``where`` in the config) and a note, if any.

    Without a validation split a ``val_`` metric falls back to its ``train_`` twin
    (top-k to train accuracy), and the note says so.
    """
    known = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} | {f"val_top{k}_accuracy" for k in top_ks}
    if name not in known:
        raise ConfigError(f"{where}: unknown metric '{name}'; use one of {sorted(known)}")
    if name.startswith("val_") and not has_validation:
        fallback = "train_" + name[4:] if name in ("val_loss", "val_accuracy") else "train_accuracy"
        return fallback, f"{where}: no validation split, so '{fallback}' is monitored instead of '{name}'"
    return name, None


class BestTracker:
    """The best value of ``monitor`` so far and its epoch: which epoch best.npz holds."""

    def __init__(self, monitor: str, mode: str):
        self.monitor, self.mode = monitor, mode
        self.value: float | None = None
        self.epoch: int | None = None

    def update(self, row: dict[str, Any]) -> bool:
        """Take an epoch's row; True when it is the new best."""
        if not improves(row[self.monitor], self.value, self.mode):
            return False
        self.value, self.epoch = row[self.monitor], row["epoch"]
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.value, "best_epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.epoch = state.get("best"), state.get("best_epoch")


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    The rule of ``keras.callbacks.EarlyStopping``: every epoch adds one to ``wait``; an
    epoch that improves on the best by more than ``min_delta`` becomes the best, sets
    ``wait`` back to 0 and never stops; one that does not stops training when ``wait >=
    patience``. So ``patience: 0`` stops at the first epoch that does not improve,
    ``patience: 2`` after two such epochs in a row, and the first epoch never stops.
    Unlike Keras, a NaN or infinite value never becomes the best (as for best.npz).
    """

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0):
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = int(patience), abs(float(min_delta))
        self.best: float | None = None
        self.wait = 0

    def update(self, row: dict[str, Any]) -> bool:
        """Take an epoch's row; True when training should stop after this epoch."""
        self.wait += 1
        if improves(row[self.monitor], self.best, self.mode, self.min_delta):
            self.best, self.wait = row[self.monitor], 0
            return False
        return self.wait >= self.patience and row["epoch"] > 1

    def reason(self) -> str:
        best = "no finite value yet" if self.best is None else f"{self.best:.6g}"
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"{self.monitor} has not improved{by} for {self.wait} epoch{'s' * (self.wait != 1)} "
                f"(best {best}, patience {self.patience})")

    def state_dict(self) -> dict[str, Any]:
        return {"es_best": self.best, "es_bad": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("es_best"), int(state.get("es_bad", 0))
