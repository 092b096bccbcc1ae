"""Training curves as PNG files, for one run (``curves.png``) or several side by side (``compare``).

matplotlib is the ``plot`` extra: it is imported on first use, and without it the
functions here return None so that the caller can say once how to add it
(:data:`PLOT_EXTRA`). Files are written through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

PLOT_EXTRA = "pip install 'nettrain[plot]'"


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plotting_available() -> bool:
    return pyplot() is not None


def curves_figure(plt, runs: Mapping[str, list[dict[str, Any]]]):
    """Loss and accuracy against epoch: train solid, validation dashed, one colour per run.

    ``runs`` maps a label to that run's metric rows; a single run is labelled by split only.
    Epochs are whole numbers, so the x axis has integer ticks only.
    """
    from matplotlib.ticker import MaxNLocator

    several = len(runs) > 1
    fig, axes = plt.subplots(1, 2, figsize=(11 if several else 10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for i, (name, rows) in enumerate(runs.items()):
            epochs = [r["epoch"] for r in rows]
            for split, style in (("train", "-"), ("val", "--")):
                values = [r.get(f"{split}_{metric}") for r in rows]
                if any(v is not None for v in values):
                    ax.plot(epochs, [math.nan if v is None else v for v in values], style, marker="o",
                            label=f"{name} {split}" if several else split, color=f"C{i}" if several else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small" if several else None)
    fig.tight_layout()
    return fig


def save_png(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` through a temporary file in the same folder; OSError on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def plot_runs(runs: Mapping[str, list[dict[str, Any]]], path: str | Path) -> Path | None:
    """The curves of ``runs`` (label -> metric rows) in one PNG; None without matplotlib or rows."""
    plt = pyplot()
    if plt is None or not any(runs.values()):
        return None
    return save_png(plt, curves_figure(plt, {name: rows for name, rows in runs.items() if rows}), path)
