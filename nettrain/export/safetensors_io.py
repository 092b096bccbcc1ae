"""Weights as safetensors: every parameter and buffer by its nettrain name, the config in the metadata.

A file written with the default layout carries everything ``nettrain eval`` and
``nettrain predict`` need besides the data: the resolved config text, the class
names and the training set's normalisation (metadata is text-only, so these are
JSON). ``layout="torch"`` writes the PyTorch twin's ``state_dict`` instead (names
like ``3.rnn.weight_ih_l0``, dense and recurrent kernels transposed), for
``load_state_dict(strict=True)``; nettrain does not read those back.

Metadata keys: ``format`` (``nettrain-weights``), ``format_version``, ``layout``,
``nettrain_version``, ``config_name``, ``config``, ``config_path``, ``classes``,
``normalization`` (``{"normalize", "mean", "std"}``), ``epoch``, ``source``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from .common import ExportError, require
from .safetensors_read import FORMAT, FORMAT_VERSION, read_safetensors
from .source import ExportSource



def nettrain_tensors(model) -> dict[str, np.ndarray]:
    """Parameters then buffers, by their nettrain names (``conv2d_1.kernel``, ``batchnorm_1.running_mean``)."""
    return {name: np.ascontiguousarray(a) for name, a in {**model.parameters(), **model.buffers()}.items()}


def torch_tensors(src: ExportSource) -> dict[str, np.ndarray]:
    require("torch", "--layout torch")
    from .torch_layout import torch_state_dict

    try:
        return torch_state_dict(src.model)
    except NotImplementedError as e:
        raise ExportError(f"{src.origin}: no PyTorch twin for this model ({e}); use --layout nettrain") from None


def metadata(src: ExportSource, layout: str) -> dict[str, str]:
    def floats(a):
        return None if a is None else [float(v) for v in np.asarray(a, np.float32)]

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "nettrain_version": __version__,
        "config_name": src.name,
        "config": src.config_text,
        "config_path": src.config_path,
        "classes": json.dumps(src.classes),
        "normalization": json.dumps({"normalize": src.normalize, "mean": floats(src.mean), "std": floats(src.std)}),
        "epoch": str(src.epoch),
        "source": src.origin,
    }


def safetensors_bytes(src: ExportSource, layout: str = "nettrain") -> tuple[bytes, dict[str, np.ndarray]]:
    """The file's bytes and the tensors in it."""
    st = require("safetensors.numpy", "safetensors export")
    tensors = nettrain_tensors(src.model) if layout == "nettrain" else torch_tensors(src)
    return st.save(tensors, metadata=metadata(src, layout)), tensors


def check_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> float:
    """Read the file back: 0.0 when every tensor came back bit for bit, else an ExportError."""
    back, _ = read_safetensors(path)
    if sorted(back) != sorted(tensors):
        raise ExportError(f"{path}: read back {len(back)} tensors, wrote {len(tensors)}")
    for name, array in tensors.items():
        if back[name].dtype != array.dtype or back[name].tobytes() != np.ascontiguousarray(array).tobytes():
            raise ExportError(f"{path}: '{name}' did not read back bit for bit")
    return 0.0
