"""Reading weights that ``nettrain export --format safetensors`` wrote, for ``eval`` and ``predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CheckpointError
from .common import require

FORMAT = "nettrain-weights"
FORMAT_VERSION = "1"


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
    """A :class:`nettrain.trained.Trained` from a ``.safetensors`` written by ``nettrain export``."""
    from ..builder import build_model
    from ..checkpoint import Checkpoint, architecture_signature, config_hash
    from ..trained import Trained, config_from_text

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
