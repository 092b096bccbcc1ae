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

_MODULES = {  # module: the names it exports
    "common": ("DAMAGED", "RawData"),
    "idx": ("FASHION_MNIST_CLASSES", "MNIST_CLASSES", "IDX_DTYPES", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC",
            "read_idx", "read_idx_split", "read_idx_dataset", "write_idx"),
    "cifar": ("CIFAR10_CLASSES", "SafeUnpickler", "safe_unpickle", "read_cifar_batch", "read_cifar_binary_batch",
              "read_cifar_meta", "read_cifar10"),
    "npz": ("read_npz", "read_npz_dataset"),
    "image_folder": ("read_image_folder", "read_image_folder_dataset"),
    "synthetic": ("make_synthetic",),
    "spec": ("AugmentSpec", "DataSpec", "SyntheticSpec"),
    "locate": ("REPO_DATA_DIR", "SYSTEM_FASHION_MNIST_DIR", "dataset_candidates", "describe_copy", "locate_data",
               "path_candidates"),
    "load": ("DataBundle", "Split", "channel_stats", "load_data", "normalize_channels", "split_validation"),
    "batches": ("Batches", "augment_batch", "horizontal_flip", "random_crop"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["DataError", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
