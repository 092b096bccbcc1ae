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
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import CheckpointError
from . import ExportError, require
from .source import ExportSource

FORMAT = "nettrain-weights"
FORMAT_VERSION = "1"


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


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a one-line CheckpointError for anything unreadable."""
    safetensors = require("safetensors", "reading .safetensors weights")
    from safetensors.numpy import load

    path = Path(path)
    try:
        data = path.read_bytes()
        with safetensors.safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        return load(data), meta
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for a damaged header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _check_names(path: Path, model, tensors: dict[str, np.ndarray]) -> None:
    from ..checkpoint import architecture_signature

    expected = dict(architecture_signature(model))
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: no tensor '{name}' {shape}; the file was written for another model")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{path}: '{name}' has shape {tuple(tensors[name].shape)}, the model {shape}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: tensor '{extra[0]}' is not in the model; the file was written for another model")


def load_safetensors_trained(path: str | Path, overrides: Sequence[str] = ()):
    """A :class:`nettrain.evaluate.Trained` from a ``.safetensors`` written by ``nettrain export``."""
    from ..builder import build_model
    from ..checkpoint import Checkpoint, architecture_signature, config_hash
    from ..evaluate import Trained, config_from_text

    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: no nettrain metadata (format {FORMAT}); give weights written by "
                              "nettrain export --format safetensors")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: weights format version {meta.get('format_version')} is not supported "
                              f"(this nettrain reads version {FORMAT_VERSION})")
    if meta.get("layout") != "nettrain":
        raise CheckpointError(f"{path}: written with --layout {meta.get('layout')} for PyTorch; nettrain reads "
                              "files exported with --layout nettrain")
    config = config_from_text(meta["config"], f"{path} (stored config)", overrides)
    model = build_model(config, seed=int(config.train.seed))
    model.cast(np.float32)
    _check_names(path, model, tensors)
    params, buffers = model.parameters(), model.buffers()
    model.load_arrays({k: tensors[k] for k in params}, {k: tensors[k] for k in buffers})
    try:
        norm = json.loads(meta.get("normalization", "{}"))
        classes = [str(c) for c in json.loads(meta.get("classes", "[]"))]
        epoch = int(meta.get("epoch", 0))
    except (ValueError, TypeError):
        raise CheckpointError(f"{path}: unreadable nettrain metadata (classes, normalization or epoch)") from None
    mean, std = (None if norm.get(k) is None else np.asarray(norm[k], np.float32) for k in ("mean", "std"))
    ckpt = Checkpoint(params={k: tensors[k] for k in params}, buffers={k: tensors[k] for k in buffers},
                      config_text=meta["config"], config_path=meta.get("config_path", ""), epoch=epoch,
                      classes=classes, mean=mean, std=std, architecture=architecture_signature(model),
                      config_sha256=config_hash(meta["config"]), path=path)
    return Trained(model, config, ckpt, path)


def check_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> float:
    """Read the file back: 0.0 when every tensor came back bit for bit, else an ExportError."""
    back, _ = read_safetensors(path)
    if sorted(back) != sorted(tensors):
        raise ExportError(f"{path}: read back {len(back)} tensors, wrote {len(tensors)}")
    for name, array in tensors.items():
        if back[name].dtype != array.dtype or back[name].tobytes() != np.ascontiguousarray(array).tobytes():
            raise ExportError(f"{path}: '{name}' did not read back bit for bit")
    return 0.0
