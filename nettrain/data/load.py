"""From a :class:`DataSpec` to float32 splits: read, split, scale, normalize, reshape to the model's input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..shapes import format_shape
from .cifar import read_cifar10
from .common import RawData, Shape
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, read_idx_dataset
from .image_folder import read_image_folder_dataset
from .locate import describe_copy, locate_data
from .npz import read_npz_dataset
from .spec import DataSpec, SyntheticSpec
from .synthetic import make_synthetic


@dataclass
class Split:
    """One split: ``x`` float32 ``(N, *sample_shape)``, ``y`` int64 ``(N,)``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    """Train/validation/test splits, class names and the normalization statistics.

    ``mean`` and ``std`` are per channel ``(C,)`` float32 for ``normalize:
    per_channel`` (computed on the training split after scaling to [0, 1]), else None.
    """

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    mean: np.ndarray | None
    std: np.ndarray | None
    source: str = ""  # which copy of the data (describe_copy)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _load_raw(spec: DataSpec, input_shape: Shape | None, config_dir: Path | None) -> RawData:
    """The arrays of the data set the spec names, as its reader returns them."""
    if spec.dataset == "synthetic":
        return make_synthetic(spec.synthetic or SyntheticSpec(), input_shape)
    path = locate_data(spec, config_dir)
    if spec.dataset in ("fashion_mnist", "mnist"):
        return read_idx_dataset(path, FASHION_MNIST_CLASSES if spec.dataset == "fashion_mnist" else MNIST_CLASSES)
    if spec.dataset == "cifar10":
        return RawData(*read_cifar10(path))
    if spec.dataset == "npz":
        return read_npz_dataset(path)
    channels = spec.channels
    if channels is None and input_shape is not None and len(input_shape) == 3 and input_shape[0] in (1, 3):
        channels = input_shape[0]
    return read_image_folder_dataset(path, channels)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of a random ``fraction`` held out from ``n`` samples, each sorted."""
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise DataError(f"validation_split {fraction} leaves no training samples out of {n}; "
                        "lower data.validation_split or use more data")
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _scale(x: np.ndarray, normalize: str) -> np.ndarray:
    """float32 copy; uint8 pixels go to [0, 1] unless ``normalize: none``."""
    out = x.astype(np.float32)
    if x.dtype == np.uint8 and normalize != "none":
        out *= np.float32(1.0 / 255.0)
    return out


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel of ``x`` ``(N, C, H, W)`` -> ``(C,), (C,)``; ``(N, F)`` counts as one channel."""
    axes = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel would divide by zero
    return np.atleast_1d(mean).astype(np.float32), np.atleast_1d(std).astype(np.float32)


def normalize_channels(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel, in place on float32 ``x`` ``(N, C, H, W)`` or ``(N, F)``."""
    if x.ndim == 4:
        mean, std = mean[:, None, None], std[:, None, None]
    x -= mean
    x /= std
    return x


def _reshape_to_input(x: np.ndarray, input_shape: Shape, source: str) -> np.ndarray:
    sample = x.shape[1:]
    if sample == tuple(input_shape):
        return x
    if math.prod(sample) != math.prod(input_shape):
        raise DataError(f"{source}: samples are {format_shape(sample)} ({math.prod(sample)} values) but the "
                        f"model's input_shape is {format_shape(input_shape)} ({math.prod(input_shape)} values); "
                        "change model.input_shape to match the data")
    if len(sample) == 3 and len(input_shape) == 3:
        # same size but another image layout: a reshape would scramble pixels
        raise DataError(f"{source}: images are {format_shape(sample)} but the model's input_shape is "
                        f"{format_shape(input_shape)}; change model.input_shape to {format_shape(sample)}")
    return x.reshape(len(x), *input_shape)


def load_data(spec: DataSpec, input_shape: Shape | None = None, seed: int = 0,
              config_dir: Path | None = None) -> DataBundle:
    """Read, split, scale, normalize and shape a data set as the spec says.

    ``input_shape`` is the model's internal input shape without the batch axis
    (``(C, H, W)``, ``(T, F)`` or ``(F,)``): samples of the same size are reshaped
    to it (28x28 images become 28 timesteps of 28 features), others are an error.
    """
    try:
        return _load_bundle(spec, input_shape, seed, config_dir)
    except MemoryError:
        raise DataError(f"{spec.path or spec.dataset}: not enough memory to load the data set; use data.subset "
                        "or a smaller data set") from None


def _load_bundle(spec: DataSpec, input_shape: Shape | None, seed: int, config_dir: Path | None) -> DataBundle:
    raw = _load_raw(spec, input_shape, config_dir)
    source = spec.path or spec.dataset
    x_train, y_train = raw.x_train, raw.y_train
    if spec.subset is not None:
        x_train, y_train = x_train[:spec.subset], y_train[:spec.subset]
    if len(y_train) == 0:
        raise DataError(f"{source}: the training split is empty")

    x_val, y_val = raw.x_val, raw.y_val
    if x_val is None and spec.validation == "test":
        x_val, y_val = raw.x_test, raw.y_test
        if x_val is None:
            raise DataError(f"{source}: validation: test, but the data set has no test split; "
                            "use validation: split")
    elif x_val is None and spec.validation_split > 0:
        train_idx, val_idx = split_validation(len(y_train), spec.validation_split, seed)
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]

    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (raw.x_test, raw.y_test)}
    scaled = {k: (_scale(x, spec.normalize), y) for k, (x, y) in splits.items() if x is not None}
    mean = std = None
    if spec.normalize == "per_channel":
        mean, std = channel_stats(scaled["train"][0])
        for x, _ in scaled.values():
            normalize_channels(x, mean, std)
    if input_shape is not None:
        scaled = {k: (_reshape_to_input(x, tuple(input_shape), source), y) for k, (x, y) in scaled.items()}
    if spec.augment.active and scaled["train"][0].ndim != 4:
        raise DataError(f"{source}: data.augment needs images (C, H, W), but samples are "
                        f"{format_shape(scaled['train'][0].shape[1:])}; remove data.augment")
    made = {k: Split(x, y.astype(np.int64)) for k, (x, y) in scaled.items()}
    where = None if spec.dataset == "synthetic" else locate_data(spec, config_dir)
    return DataBundle(made["train"], made.get("val"), made.get("test"), list(raw.classes), mean, std,
                      describe_copy(spec, where))
