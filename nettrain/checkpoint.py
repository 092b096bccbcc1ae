"""Checkpoints: one ``.npz`` (no pickle) holding everything needed to continue a run exactly.

Keys of the archive:

* ``param/<name>``, ``buffer/<name>`` -- the model's parameters and BatchNorm statistics;
* ``optim/<key>``, ``sched/<key>`` -- optimizer slots and schedule state (flat numeric arrays);
* ``data/mean``, ``data/std`` -- the training set's normalisation, for eval and predict;
* ``config`` -- the resolved config text (UTF-8 bytes as uint8);
* ``meta`` -- JSON text (UTF-8 bytes as uint8): format version, epoch and batch cursor,
  global step, the config's SHA-256, the architecture signature, RNG states, class
  names and the trainer's own counters.

Files are written to a temporary file in the same folder, flushed, fsynced and then
renamed over the target with ``os.replace``, so a crash or a full disk never leaves
a half-written ``last.npz``: readers see the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runs import replace_atomically
from .errors import CheckpointError

FORMAT = "nettrain-checkpoint"
VERSION = 1
_PREFIXES = {"param/": "params", "buffer/": "buffers", "optim/": "optimizer", "sched/": "schedule"}
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip
# What to do about a damaged file, appended to every "corrupt" message.
DAMAGED = "the file is damaged; use another checkpoint of the run (best.npz or last.npz) or train again"


def config_hash(text: str) -> str:
    """SHA-256 of the config text, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def architecture_signature(model) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape), ...]`` of every parameter then every buffer, in model order."""
    named = list(model.parameters().items()) + list(model.buffers().items())
    return [(name, tuple(int(d) for d in a.shape)) for name, a in named]


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    ``epoch`` is the number of finished epochs and ``batch`` the number of batches
    already trained in the next one (0 at an epoch boundary), so training resumes at
    batch ``batch`` of epoch ``epoch`` (both counted from 0).
    """

    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    schedule: dict[str, np.ndarray] = field(default_factory=dict)
    config_text: str = ""
    config_path: str = ""
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    rng_states: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    trainer_state: dict[str, Any] = field(default_factory=dict)
    architecture: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    config_sha256: str = ""
    path: Path | None = None

    @property
    def mid_epoch(self) -> bool:
        return self.batch > 0


# --------------------------------------------------------------------------- text in arrays

def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _array_text(array: np.ndarray) -> str:
    return np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8")


# --------------------------------------------------------------------------- saving

def checkpoint_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The flat ``{key: array}`` mapping that :func:`save_checkpoint` writes."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, attr in _PREFIXES.items():
        for name, a in getattr(ckpt, attr).items():
            arrays[prefix + name] = np.asarray(a)
    if ckpt.mean is not None:
        arrays["data/mean"] = np.asarray(ckpt.mean, dtype=np.float32)
        arrays["data/std"] = np.asarray(ckpt.std, dtype=np.float32)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(ckpt.epoch),
        "batch": int(ckpt.batch),
        "global_step": int(ckpt.global_step),
        "config_sha256": config_hash(ckpt.config_text),
        "config_path": ckpt.config_path,
        "architecture": [[name, list(shape)] for name, shape in ckpt.architecture],
        "rng_states": ckpt.rng_states,
        "classes": list(ckpt.classes),
        "trainer": ckpt.trainer_state,
    }
    arrays["meta"] = _text_array(json.dumps(meta, sort_keys=True))
    arrays["config"] = _text_array(ckpt.config_text)
    return arrays


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can lose it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file + fsync + ``os.replace``).

    Raises CheckpointError (and leaves any existing file at ``path`` untouched) when the
    folder cannot be written.
    """
    path = Path(path)
    arrays = checkpoint_arrays(ckpt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda f: np.savez(f, **arrays), binary=True)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(f"{path}: cannot write checkpoint ({reason}); check that the folder is writable "
                              "and the disk has space") from None
    _fsync_dir(path.parent)
    return path


# --------------------------------------------------------------------------- loading

def _is_zip(path: Path) -> bool:
    # np.load takes any bytes that are neither zip nor .npy for a pickle; sniff first so
    # that a text file is called what it is, not "pickled objects".
    with open(path, "rb") as f:
        return f.read(4) in _ZIP_MAGICS


def _read_archive(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint file (only ``keys`` when given), or a one-line CheckpointError."""
    try:
        if not _is_zip(path):
            raise CheckpointError(f"{path}: not a checkpoint (.npz archive expected); "
                                  "give a checkpoints/last.npz or best.npz, or the run folder")
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not a checkpoint (.npz archive expected)")
            return {key: archive[key] for key in archive.files if keys is None or key in keys}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except AttributeError:
        # np.load hands back a plain ndarray (no context manager) for a .npy file
        raise CheckpointError(f"{path}: not a checkpoint (.npz archive expected)") from None
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise CheckpointError(f"{path}: holds pickled Python objects, which are refused; "
                                  "it was not written by nettrain") from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e}); {DAMAGED}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError, TypeError,
            NotImplementedError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e}); {DAMAGED}") from None


def _parse_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    for key in ("meta", "config"):
        if key not in arrays:
            raise CheckpointError(f"{path}: not a nettrain checkpoint (no '{key}' entry)")
    try:
        meta = json.loads(_array_text(arrays["meta"]))
    except (UnicodeDecodeError, ValueError, TypeError):
        raise CheckpointError(f"{path}: corrupt checkpoint (unreadable 'meta' entry); {DAMAGED}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a nettrain checkpoint (unknown format)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} is not supported "
                              f"(this nettrain reads version {VERSION})")
    required = ("epoch", "batch", "global_step", "config_sha256", "architecture", "rng_states", "classes", "trainer")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: corrupt checkpoint ('meta' lacks {', '.join(missing)}); {DAMAGED}")
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta`` entry (epoch, batch, global step, classes, the trainer's counters under
    ``trainer``) without reading its arrays, e.g. to list runs; CheckpointError as load_checkpoint."""
    path = Path(path)
    return _parse_meta(path, _read_archive(path, keys=("meta", "config")))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Anything else -- a missing, truncated or corrupt file, pickled objects, missing
    entries, a config whose hash does not match -- raises a one-line CheckpointError.
    """
    path = Path(path)
    arrays = _read_archive(path)
    meta = _parse_meta(path, arrays)
    try:
        config_text = _array_text(arrays["config"])
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: corrupt checkpoint (config text is not UTF-8); {DAMAGED}") from None
    if config_hash(config_text) != meta["config_sha256"]:
        raise CheckpointError(f"{path}: corrupt checkpoint (the stored config does not match its SHA-256); {DAMAGED}")
    groups: dict[str, dict[str, np.ndarray]] = {attr: {} for attr in _PREFIXES.values()}
    for key, a in arrays.items():
        for prefix, attr in _PREFIXES.items():
            if key.startswith(prefix):
                groups[attr][key[len(prefix):]] = a
    architecture = [(str(name), tuple(int(d) for d in shape)) for name, shape in meta["architecture"]]
    stored = {**{n: a.shape for n, a in groups["params"].items()}, **{n: a.shape for n, a in groups["buffers"].items()}}
    for name, shape in architecture:
        if name not in stored:
            raise CheckpointError(f"{path}: corrupt checkpoint (no array for '{name}'); {DAMAGED}")
        if tuple(stored[name]) != shape:
            raise CheckpointError(f"{path}: corrupt checkpoint ('{name}' has shape {tuple(stored[name])}, "
                                  f"its signature says {shape}); {DAMAGED}")
    return Checkpoint(
        params=groups["params"],
        buffers=groups["buffers"],
        optimizer=groups["optimizer"],
        schedule=groups["schedule"],
        config_text=config_text,
        config_path=str(meta.get("config_path", "")),
        epoch=int(meta["epoch"]),
        batch=int(meta["batch"]),
        global_step=int(meta["global_step"]),
        rng_states=meta["rng_states"],
        classes=[str(c) for c in meta["classes"]],
        mean=arrays.get("data/mean"),
        std=arrays.get("data/std"),
        trainer_state=meta["trainer"],
        architecture=architecture,
        config_sha256=meta["config_sha256"],
        path=path,
    )


# --------------------------------------------------------------------------- model <-> checkpoint

def check_architecture(ckpt: Checkpoint, model) -> None:
    """Refuse a checkpoint saved for another architecture, naming the first difference."""
    where = ckpt.path or "checkpoint"
    saved = ckpt.architecture
    current = architecture_signature(model)
    for i, (mine, theirs) in enumerate(zip(current, saved)):
        if mine == theirs:
            continue
        if mine[0] != theirs[0]:
            problem = f"entry {i} is '{theirs[0]}' {theirs[1]} in the checkpoint but '{mine[0]}' {mine[1]} in the model"
        else:
            problem = f"'{mine[0]}' has shape {theirs[1]} in the checkpoint but {mine[1]} in the model"
        break
    else:
        if len(current) == len(saved):
            return
        if len(current) > len(saved):
            name, shape = current[len(saved)]
            problem = f"the model has '{name}' {shape}, which the checkpoint lacks"
        else:
            name, shape = saved[len(current)]
            problem = f"the checkpoint has '{name}' {shape}, which the model lacks"
    raise CheckpointError(f"{where}: saved for a different architecture: {problem}; "
                          "use the config the checkpoint was trained with")


def model_rng_states(model) -> dict[str, Any]:
    """The bit-generator state of every Dropout generator, by layer path (JSON-ready)."""
    return {path: gen.bit_generator.state for path, gen in model.random_generators().items()}


def restore_model(ckpt: Checkpoint, model) -> None:
    """Load parameters, buffers and generator states into ``model`` (architecture checked first)."""
    check_architecture(ckpt, model)
    model.load_arrays(ckpt.params, ckpt.buffers)
    generators = model.random_generators()
    unsaved = sorted(set(generators) - set(ckpt.rng_states))
    if unsaved:
        raise CheckpointError(f"{ckpt.path}: saved for a different architecture: the model's layer '{unsaved[0]}' "
                              "has a random generator the checkpoint lacks; use the config the checkpoint was trained with")
    for path, state in ckpt.rng_states.items():
        if path not in generators:
            raise CheckpointError(f"{ckpt.path}: random state for layer '{path}', which the model does not have")
        try:
            generators[path].bit_generator.state = state
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.path}: corrupt random state for layer '{path}' ({e}); {DAMAGED}") from None
