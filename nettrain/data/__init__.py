"""Data sets: safe readers for the real file formats, the ``data:`` config section, batches.

Readers turn files into ``uint8`` (or float) arrays in NCHW order and raise
:class:`~nettrain.errors.DataError` -- never another exception type -- with one
line naming the file and the problem:

* :mod:`.idx` -- MNIST / Fashion-MNIST IDX files, gzipped or raw;
* :mod:`.cifar` -- CIFAR-10 python (pickle) and binary batches; pickles are loaded
  by an unpickler that can build nothing but plain numpy arrays;
* :mod:`.npz` -- ``.npz`` archives, never unpickling object arrays;
* :mod:`.image_folder` -- one sub-folder per class (needs Pillow);
* :mod:`.synthetic` -- random class prototypes plus noise.

:mod:`.spec` holds the ``data:`` section (:class:`DataSpec`), :mod:`.locate`
finds a data set on disk, :mod:`.load` turns a spec into a :class:`DataBundle`
of float32 splits normalized with statistics of the training split only, and
:mod:`.batches` yields mini-batches in an order that depends only on
``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.

Names are imported from their modules on first use, so importing
:mod:`nettrain.data.spec` (as the config schema does) loads no reader.
"""

from __future__ import annotations

from ..errors import DataError
from ..lazy import lazy_exports

_EXPORTS = {
    "DAMAGED": "common",
    "RawData": "common",
    "FASHION_MNIST_CLASSES": "idx",
    "MNIST_CLASSES": "idx",
    "IDX_DTYPES": "idx",
    "IDX_IMAGES_MAGIC": "idx",
    "IDX_LABELS_MAGIC": "idx",
    "read_idx": "idx",
    "read_idx_split": "idx",
    "read_idx_dataset": "idx",
    "write_idx": "idx",
    "CIFAR10_CLASSES": "cifar",
    "SafeUnpickler": "cifar",
    "safe_unpickle": "cifar",
    "read_cifar_batch": "cifar",
    "read_cifar_binary_batch": "cifar",
    "read_cifar_meta": "cifar",
    "read_cifar10": "cifar",
    "read_npz": "npz",
    "read_npz_dataset": "npz",
    "read_image_folder": "image_folder",
    "read_image_folder_dataset": "image_folder",
    "make_synthetic": "synthetic",
    "AugmentSpec": "spec",
    "DataSpec": "spec",
    "SyntheticSpec": "spec",
    "REPO_DATA_DIR": "locate",
    "SYSTEM_FASHION_MNIST_DIR": "locate",
    "dataset_candidates": "locate",
    "locate_data": "locate",
    "path_candidates": "locate",
    "DataBundle": "load",
    "Split": "load",
    "channel_stats": "load",
    "load_data": "load",
    "normalize_channels": "load",
    "split_validation": "load",
    "Batches": "batches",
    "augment_batch": "batches",
    "horizontal_flip": "batches",
    "random_crop": "batches",
}

__all__ = ["DataError", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
