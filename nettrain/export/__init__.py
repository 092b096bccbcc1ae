"""Trained networks leave nettrain: ONNX graphs and safetensors weights.

    from nettrain.export import export
    export("runs/fashion_cnn-20250101-120000", "fashion_cnn.onnx", check=True)

``export`` reads a SOURCE (a run folder, a checkpoint ``.npz``, a config ``.yaml``
for its initial weights, or a ``.safetensors`` written here) and writes the
chosen format. The formats' libraries are extras, imported only here:
``pip install 'nettrain[onnx]'`` (onnx, onnxruntime, safetensors).

Modules: :mod:`.source` (what to export), :mod:`.onnx_graph` (the graph
builder and the check), :mod:`.onnx_layers` and :mod:`.onnx_recurrent` (one
converter per layer type), :mod:`.safetensors_io` and :mod:`.torch_layout`
(PyTorch's names and layouts via the PyTorch twin of a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import INSTALL_HINTS, ExportError, require  # noqa: F401  (the package's public names)

FORMATS = ("onnx", "safetensors")
LAYOUTS = ("nettrain", "torch")
def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``); one-line error if it cannot."""
    from ..runs import replace_atomically

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda f: f.write(data), binary=True)
    except OSError as e:
        raise ExportError(f"{path}: cannot write ({e.strerror or e}); choose another output path with -o") from None
    return path


@dataclass
class ExportResult:
    """What :func:`export` wrote: the file, its format, where the weights came from, the check's outcome."""

    path: Path
    format: str
    origin: str
    size: int
    max_difference: float | None = None  # ONNX --check: ONNX Runtime against nettrain's forward
    check_inputs: int = 0
    tensors: int = 0  # safetensors: arrays written


def format_of(output: Path, format: str | None) -> str:
    """The format asked for, else the one the output's suffix names."""
    if format is None:
        suffix = output.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise ExportError(f"{output}: say --format onnx or --format safetensors (the suffix does not tell)")
        return suffix
    if format not in FORMATS:
        raise ExportError(f"--format must be onnx or safetensors, got {format!r}")
    return format


def export(source: str | Path, output: str | Path, format: str | None = None, *, checkpoint: str = "best",
           check: bool = False, include_normalization: bool = False, layout: str = "nettrain") -> ExportResult:
    """Export ``source`` to ``output`` as ONNX or safetensors (see the module doc)."""
    from .source import load_source

    output = Path(output)
    if output.is_dir():
        raise ExportError(f"{output}: is a folder; give a file name with -o, e.g. -o {output / 'model.onnx'}")
    format = format_of(output, format)
    if layout not in LAYOUTS:
        raise ExportError(f"--layout must be nettrain or torch, got {layout!r}")
    if format == "onnx" and layout != "nettrain":
        raise ExportError("--layout torch applies to --format safetensors; an ONNX graph has its own layout")
    if format == "safetensors" and include_normalization:
        raise ExportError("--include-normalization applies to --format onnx; "
                          "a safetensors file always carries the normalisation in its metadata")
    src = load_source(source, checkpoint)
    if format == "onnx":
        from .onnx_graph import check_onnx, onnx_bytes

        data = onnx_bytes(src, include_normalization)
        path = write_bytes(output, data)
        result = ExportResult(path, format, src.origin, len(data))
        if check:
            result.max_difference, result.check_inputs = check_onnx(data, src, include_normalization)
        return result
    from .safetensors_io import check_safetensors, safetensors_bytes

    data, tensors = safetensors_bytes(src, layout)
    path = write_bytes(output, data)
    result = ExportResult(path, format, src.origin, len(data), tensors=len(tensors))
    if check:
        result.max_difference = check_safetensors(path, tensors)
    return result
