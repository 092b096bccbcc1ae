"""What the readers share: the one-line error, label and count checks, the arrays as read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

Shape = tuple[int, ...]

# Advice for a file that is cut short or damaged.
DAMAGED = "the file is incomplete or damaged; download or write it again"


def fail(path: Path | str, problem: str) -> DataError:
    """``DataError("<path>: <problem>")``: every reader's error names the file first."""
    return DataError(f"{path}: {problem}")


def check_labels(path: Path | str, y: np.ndarray, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise fail(path, f"labels out of range: found {int(y.min())}..{int(y.max())}, "
                         f"expected 0..{num_classes - 1}; every label must be the index of one of the "
                         f"{num_classes} classes")


def check_counts(path: Path | str, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise fail(path, f"count mismatch: {len(x)} images but {len(y)} labels; "
                         "give one label per image (files of the same split)")


@dataclass
class RawData:
    """Arrays as read: images ``(N, C, H, W)`` or vectors ``(N, F)``, original dtype."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
