"""The export error and the optional-library import shared by the export modules."""

from __future__ import annotations

import importlib

from ..errors import NettrainError

INSTALL_HINTS = {
    "onnx": "pip install 'nettrain[onnx]'",
    "onnxruntime": "pip install 'nettrain[onnx]'",
    "safetensors": "pip install 'nettrain[onnx]'",
    "torch": "pip install 'nettrain[bench]'",
}


class ExportError(NettrainError):
    """A model cannot be exported (unsupported layer, missing library, unwritable output)."""


def require(module: str, purpose: str):
    """Import an optional library, or raise a one-line ExportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{purpose} needs the '{module.split('.')[0]}' package: "
                          f"{INSTALL_HINTS.get(module.split('.')[0], 'pip install ' + module)}") from None
