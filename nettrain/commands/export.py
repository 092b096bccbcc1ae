"""``nettrain export SOURCE``: ONNX graphs and safetensors weights (the library side is nettrain.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import run_or_exit


def export_command(
    source: Path = typer.Argument(..., help="a run folder, a checkpoint .npz, a .safetensors, or a config .yaml "
                                            "(its initial weights)"),
    output: Path = typer.Option(..., "-o", "--output", help="the file to write"),
    format: Optional[str] = typer.Option(None, "--format", help="onnx or safetensors (default: from -o's suffix)"),
    check: bool = typer.Option(False, "--check", help="run the ONNX file in ONNX Runtime on random input and print "
                                                      "the largest difference from nettrain (safetensors: read back)"),
    include_normalization: bool = typer.Option(False, "--include-normalization",
                                               help="ONNX: take uint8 pixels and normalise them as predict does"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last (for a run folder)"),
    layout: str = typer.Option("nettrain", "--layout", help="safetensors: nettrain names, or torch (PyTorch's "
                                                            "names and layouts)"),
) -> None:
    """Export a trained model as ONNX (opset 17) or its weights as safetensors."""
    from ..export import export

    result = run_or_exit(export, source, output, format, checkpoint=checkpoint, check=check,
                         include_normalization=include_normalization, layout=layout)
    what = f"{result.tensors} tensors" if result.format == "safetensors" else "ONNX opset 17"
    typer.echo(f"wrote {result.path} ({what}, {result.size:,} bytes) from {result.origin}")
    if result.max_difference is not None and result.format == "onnx":
        typer.echo(f"check: ONNX Runtime vs nettrain on {result.check_inputs} random inputs, "
                   f"largest difference {result.max_difference:.3g}")
    elif result.max_difference is not None:
        typer.echo(f"check: all {result.tensors} tensors read back bit for bit")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
