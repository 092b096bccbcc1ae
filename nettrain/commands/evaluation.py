"""``nettrain eval`` and ``nettrain predict``: a trained model on a split or on files (the library side is nettrain.evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..distributed.launch import is_parallel_launch
from .common import check_choice, errors_as_lines, rank_zero_result


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="a checkpoint .npz, a run folder (uses its best.npz) or an exported .safetensors"),
    split: str = typer.Option("test", "--split", help="test, val or train"),
    format: str = typer.Option("table", "--format", help="table or json"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override the stored config: --set data.path=..."),
    no_plot: bool = typer.Option(False, "--no-plot", help="write no confusion matrix PNG into the run folder"),
) -> None:
    """Evaluate a checkpoint: loss, accuracy, per-class scores and the confusion matrix."""
    from ..errors import NettrainError
    from ..evaluate import evaluate_checkpoint, plot_confusion
    from ..console import confusion_png_path, print_eval_table
    from ..plots import PLOT_EXTRA

    with errors_as_lines(f"{checkpoint}: the model or the {split} split does not fit in memory"):
        check_choice("--split", split, ("test", "val", "train"))
        check_choice("--format", format, ("table", "json"))
        if is_parallel_launch():
            from ..distributed import commands

            report = rank_zero_result(*commands.evaluate(checkpoint, split, list(set_ or [])))
        else:
            report = evaluate_checkpoint(checkpoint, split, list(set_ or []))
        png = None
        try:
            if not no_plot:
                png = plot_confusion(report, confusion_png_path(report["checkpoint"], split))
                if png is None:
                    typer.echo(f"note: no confusion matrix plot without matplotlib; {PLOT_EXTRA} adds it", err=True)
        except NettrainError as e:
            typer.echo(f"note: {e}", err=True)
    if format == "json":
        import json

        typer.echo(json.dumps(report, indent=2))
        if png is not None:
            typer.echo(f"confusion matrix plot: {png}", err=True)
    else:
        print_eval_table(report, png)


def predict_command(
    checkpoint: Path = typer.Argument(..., help="a checkpoint .npz, a run folder or an exported .safetensors"),
    files: list[Path] = typer.Argument(..., help="images, .npz files (array 'x'), .npy arrays, or folders of them"),
    format: str = typer.Option("table", "--format", help="table, json or csv"),
    top: int = typer.Option(3, "--top-k", "--top", min=1, help="how many classes to list per input"),
) -> None:
    """Classify images, .npz/.npy arrays (one sample or a batch) or every such file of a folder."""
    from ..evaluate import load_trained, predict as predict_files
    from ..console import prediction_csv_rows, print_predictions

    with errors_as_lines(f"{checkpoint}: the model or the inputs do not fit in memory; predict fewer files at once"):
        check_choice("--format", format, ("table", "json", "csv"))
        results = predict_files(load_trained(checkpoint), files, top=top)
    if format == "json":
        import json

        typer.echo(json.dumps(results, indent=2))
    elif format == "csv":
        import csv
        import sys

        csv.writer(sys.stdout, lineterminator="\n").writerows(prediction_csv_rows(results))
    else:
        print_predictions(results)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_command)
    app.command("predict")(predict_command)
