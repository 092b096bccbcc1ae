"""Evaluation and prediction from a checkpoint alone.

A checkpoint carries the resolved config it was trained with, so
:func:`load_trained` rebuilds the exact model from it (the ``data`` section can be
overridden, e.g. to point at another copy of the data set) and loads the weights.
:func:`evaluate` reports loss, accuracy, top-5 accuracy (more than 5 classes),
per-class precision/recall/F1 and the confusion matrix; :func:`predict` classifies
images (needs Pillow), the arrays of ``.npz`` and ``.npy`` files and folders of them,
normalized with the training set's statistics stored in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import load_checkpoint, restore_model
from .data import Split, load_data, normalize_channels, read_npz
from .errors import CheckpointError, DataError
from .losses import build_loss, softmax_probs
from .shapes import image_to_chw, images_to_nchw
from .trained import Trained, config_from_text
from .training.evaluation import EvalLoop, confusion_matrix


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/best.npz`` (else ``last.npz``)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in ("best.npz", "last.npz"):
                if (folder / name).is_file():
                    return folder / name
        raise CheckpointError(f"{path}: no checkpoints/best.npz or checkpoints/last.npz in this folder")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def load_trained(path: str | Path, overrides: Sequence[str] = ()) -> Trained:
    """Rebuild the model a checkpoint (or run folder, or exported .safetensors) was trained as, with its weights."""
    from .builder import build_model

    path = resolve_checkpoint(path)
    if path.suffix.lower() == ".safetensors":  # weights from `nettrain export`, the config in their metadata
        from .export.safetensors_read import load_safetensors_trained

        return load_safetensors_trained(path, overrides)
    ckpt = load_checkpoint(path)
    config = config_from_text(ckpt.config_text, f"{path} (stored config)", overrides)
    model = build_model(config, seed=int(config.train.seed))
    model.cast(np.float32)
    restore_model(ckpt, model)
    return Trained(model, config, ckpt, path)


def load_split(trained: Trained, split: str = "test") -> Split:
    """The ``split`` of the data set named by the checkpoint's (possibly overridden) config."""
    config = trained.config
    if config.data is None:
        raise DataError(f"{trained.path}: the stored config has no data section; "
                        "name one with --set data.dataset=... (and data.path=...)")
    bundle = load_data(config.data, trained.model.input_shape, int(config.train.seed), trained.config_dir)
    chosen = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if chosen is None:
        other = "val" if split == "test" and bundle.val is not None else "train"
        raise DataError(f"{config.data.path or config.data.dataset}: the data set has no {split} split; "
                        f"use --split {other}")
    return chosen


# --------------------------------------------------------------------------- metrics

def per_class_scores(cm: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [{"class": str(name), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, actual)]


def average_scores(cm: np.ndarray) -> dict[str, dict[str, Any]]:
    """Macro and weighted averages of the per-class precision, recall and F1, as scikit-learn's
    classification report: over the classes that occur in the labels or the predictions; the
    weighted one by support. Each average's support is the number of samples."""
    scores = per_class_scores(cm, range(len(cm)))
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    support = np.array([s["support"] for s in scores], dtype=np.float64)
    out = {}
    for name, weights in (("macro", seen.astype(np.float64)), ("weighted", support)):
        total = weights.sum()
        out[name] = {key: float(np.dot(weights, [s[key] for s in scores]) / total) if total > 0 else 0.0
                     for key in ("precision", "recall", "f1")}
        out[name]["support"] = int(support.sum())
    return out


def evaluate(model, split: Split, classes: Sequence[str], loss_spec, batch_size: int = 256,
             loop_class=EvalLoop) -> dict[str, Any]:
    """Loss, accuracy, top-5 (> 5 classes), per-class scores and confusion matrix of ``model`` on ``split``.

    ``loop_class``: the :class:`EvalLoop` to run (a data-parallel one shards the split).
    """
    if len(split) == 0:
        raise DataError("the split to evaluate is empty")
    k = max(len(classes), int(model.output_shape[-1]))
    loop = loop_class(model, build_loss(loss_spec), batch_size, top_ks=(5,) if k > 5 else (), confusion_classes=k)
    sums = loop.run(split.x, split.y)
    cm = sums.confusion
    names = list(classes) + [str(i) for i in range(len(classes), k)]
    report: dict[str, Any] = {
        "samples": sums.samples,
        "loss": sums.loss_sum / sums.samples,
        # every predicted position counts once (a sequence model predicts one class per timestep)
        "accuracy": float(np.trace(cm) / cm.sum()),
    }
    if k > 5:
        report["top5_accuracy"] = sums.topk_sums[5] / sums.samples
    report["classes"] = names
    report["per_class"] = per_class_scores(cm, names)
    report["averages"] = average_scores(cm)
    report["confusion_matrix"] = cm.tolist()
    return report


def evaluate_checkpoint(path: str | Path, split: str = "test", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`evaluate` on a checkpoint's data set; the report also names the checkpoint and split."""
    trained = load_trained(path, overrides)
    data = load_split(trained, split)
    batch_size = int(getattr(trained.config.train, "eval_batch_size", None) or trained.config.train.batch_size)
    report = evaluate(trained.model, data, trained.classes, trained.config.train.loss, batch_size)
    ckpt = trained.checkpoint
    return {"checkpoint": str(trained.path), "split": split, "epoch": ckpt.epoch, "batch": ckpt.batch, **report}


def plot_confusion(report: dict[str, Any], path: str | Path) -> Path | None:
    """The confusion matrix as a PNG heat map; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cm = np.asarray(report["confusion_matrix"])
    names = report["classes"]
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.get('split', '')} accuracy {report['accuracy']:.4f}")
    top = cm.max() if cm.size else 0
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise DataError(f"{path}: cannot write the confusion matrix plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------- prediction

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _image_geometry(input_shape: tuple[int, ...]) -> tuple[int, int | None, int | None]:
    """(channels, height, width) an image must have for a model input; sequences read as 1-channel HxW."""
    if len(input_shape) == 3:
        return input_shape[0], input_shape[1], input_shape[2]
    if len(input_shape) == 2:
        return 1, input_shape[0], input_shape[1]
    return 1, None, None


def read_image(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """One image file as uint8 ``(C, H, W)``, converted and resized to fit ``input_shape``."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("predicting on images needs Pillow: pip install 'nettrain[images]'") from None
    channels, h, w = _image_geometry(input_shape)
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if h is not None and im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # Pillow raises many types for a file that is not an image
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return image_to_chw(array)


def read_npz_inputs(path: Path) -> np.ndarray:
    """The inputs of an ``.npz`` batch: array ``x`` (else ``x_test``, else the only array), as written."""
    arrays = read_npz(path)
    for key in ("x", "x_test", "images"):
        if key in arrays:
            return _numeric(path, key, arrays[key])
    if len(arrays) != 1:
        raise DataError(f"{path}: name the inputs 'x' (found arrays {sorted(arrays)})")
    key, x = next(iter(arrays.items()))
    return _numeric(path, key, x)


def read_npy_inputs(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file (no pickled objects)."""
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # np.load fails on foreign bytes with many exception types
        raise DataError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(x, np.ndarray):
        raise DataError(f"{path}: holds several arrays; name the file .npz")
    return _numeric(path, "the array", x)


def _numeric(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: {key!r} must be numeric, got dtype {x.dtype}")
    return x


def as_batch(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Raw arrays -> ``(N, *sample)`` with images as NCHW. One sample without a batch axis -- ``(H, W)``,
    ``(H, W, C)``, ``(C, H, W)``, a ``(T, F)`` sequence -- gets one; ``(N, H, W, C)`` becomes NCHW."""
    shape, size = tuple(input_shape), int(np.prod(input_shape))
    hwc = (*shape[1:], shape[0]) if len(shape) == 3 else None
    one = x.shape in (shape, hwc) or (x.ndim == len(shape) - 1 and x.size == size)
    if one:
        x = x[None]
    if (x.ndim == 4 and x.shape[1:] != shape and x.shape[-1] in (1, 3)) or x.ndim == 3:
        x = images_to_nchw(x)  # (N, H, W, C) as written by most tools; (N, H, W) grey images
    return x


PREDICT_SUFFIXES = IMAGE_SUFFIXES | {".npz", ".npy"}


def predict_inputs(files: Sequence[str | Path]) -> list[Path]:
    """The files to predict: each file given, and every image, ``.npz`` and ``.npy`` of a folder, sorted."""
    out = []
    for f in files:
        path = Path(f)
        if not path.exists():  # before any reader, so a typo never reads as a missing extra
            raise DataError(f"{path}: file not found")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PREDICT_SUFFIXES)
            if not found:
                raise DataError(f"{path}: a folder without images, .npz or .npy files; "
                                f"give files or a folder of {', '.join(sorted(PREDICT_SUFFIXES))} files")
            out += found
        else:
            out.append(path)
    return out


def prepare_inputs(x: np.ndarray, input_shape: tuple[int, ...], normalize: str,
                   mean: np.ndarray | None, std: np.ndarray | None, source: str) -> np.ndarray:
    """Raw samples -> model inputs, exactly as training data was prepared: scale, normalize, reshape."""
    out = x.astype(np.float32)
    if x.dtype == np.uint8 and normalize != "none":
        out *= np.float32(1.0 / 255.0)
    if mean is not None and std is not None:
        if out.ndim == 4 and out.shape[1] != len(mean):
            raise DataError(f"{source}: inputs have {out.shape[1]} channels, the model was trained on {len(mean)}")
        out = normalize_channels(out, mean, std)
    sample = out.shape[1:]
    if sample != tuple(input_shape):
        if int(np.prod(sample)) != int(np.prod(input_shape)):
            raise DataError(f"{source}: samples of shape {sample} do not fit the model's input {tuple(input_shape)}")
        out = out.reshape(len(out), *input_shape)
    return np.ascontiguousarray(out)


def predict(trained: Trained, files: Sequence[str | Path], top: int = 3) -> list[dict[str, Any]]:
    """Class predictions for image files, ``.npz``/``.npy`` arrays and folders of them: one dict per
    sample with ``file``, ``class`` (index), ``name``, ``probability`` and ``top_k`` (the ``top`` likeliest)."""
    model = trained.model
    normalize = getattr(trained.config.data, "normalize", "per_channel")
    ckpt = trained.checkpoint
    names = list(trained.classes) or [str(i) for i in range(model.output_shape[-1])]
    name_of = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
    results = []
    for path in predict_inputs(files):
        suffix = path.suffix.lower()
        if suffix in (".npz", ".npy"):
            raw = as_batch(read_npz_inputs(path) if suffix == ".npz" else read_npy_inputs(path), model.input_shape)
            ids = [f"{path}[{i}]" for i in range(len(raw))]
        else:
            raw, ids = read_image(path, model.input_shape)[None], [str(path)]
        x = prepare_inputs(raw, model.input_shape, normalize, ckpt.mean, ckpt.std, str(path))
        for start in range(0, len(x), 256):
            logits = model.forward(x[start:start + 256], training=False)
            probs = softmax_probs(logits.reshape(len(logits), -1).astype(np.float64))
            for sample_id, p in zip(ids[start:start + 256], probs):
                order = [int(i) for i in np.argsort(-p, kind="stable")[:top]]
                results.append({
                    "file": sample_id, "class": order[0], "name": name_of(order[0]), "probability": float(p[order[0]]),
                    "top_k": [{"class": i, "name": name_of(i), "probability": float(p[i])} for i in order],
                })
    return results
