"""The ``data:`` section of a config (pydantic); imports no reader, so the config schema stays light."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator


DatasetName = Literal["fashion_mnist", "mnist", "cifar10", "npz", "image_folder", "synthetic"]
DATASETS = get_args(DatasetName)
# Other spellings of the named data sets, as `nettrain data download` takes them (case does not matter).
DATASET_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
                   "cifar-10": "cifar10", "cifar_10": "cifar10"}


class AugmentSpec(BaseModel):
    """Training-only augmentation of image batches."""

    model_config = ConfigDict(extra="forbid")

    random_crop_padding: NonNegativeInt = Field(0, description=(
        "pad each image with this many zero pixels on every side, then cut a random window of the original "
        "size; 0: off"))
    horizontal_flip: bool = Field(False, description="mirror each image left-right with probability 0.5")

    @property
    def active(self) -> bool:
        return self.random_crop_padding > 0 or self.horizontal_flip


class SyntheticSpec(BaseModel):
    """Random class-dependent patterns: each class is a fixed random image plus noise.

    ``shape`` is written as the user writes input shapes (``[H, W, C]``, ``[T, F]``
    or ``[F]``); left out, it follows the model's input shape.
    """

    model_config = ConfigDict(extra="forbid")

    shape: list[PositiveInt] | None = Field(None, min_length=1, max_length=3, description=(
        "one sample, written like `input_shape`; null: the model's `input_shape`"))
    num_classes: int = Field(10, ge=2, description="classes, each a fixed random image (its prototype)")
    train_size: PositiveInt = Field(1000, description="samples in the training split")
    test_size: NonNegativeInt = Field(200, description="samples in the test split; 0: no test split")
    noise: float = Field(0.25, ge=0.0, description=(
        "std of the Gaussian noise added to the prototype (pixel values 0..1, then stored as 0..255)"))
    seed: NonNegativeInt = Field(0, description="seeds the prototypes and the samples (not `train.seed`)")


class DataSpec(BaseModel):
    """The ``data:`` section of a config.

    ``validation: split`` carves ``validation_split`` of the training set (by the
    seed); ``validation: test`` validates on the test set.  A data set that ships
    its own validation split (``x_val`` in an npz, a ``val/`` image folder) uses it.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName = Field(description=(
        "the format (see Data sets below); `fashion-mnist`, `cifar-10` and the other spellings of "
        "`nettrain data download` work too"))
    path: str | None = Field(None, description=(
        "the file or folder; relative paths are looked up next to the config, then in the current folder, "
        "then in the project; null for the named data sets: their usual places (see below)"))
    validation: Literal["split", "test"] = Field("split", description=(
        "`split`: hold out `validation_split` of the training split (drawn with `train.seed`); `test`: validate "
        "on the test split, holding nothing out. A data set with its own validation split uses that"))
    validation_split: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "the fraction held out with `validation: split`; 0: no validation"))
    normalize: Literal["per_channel", "none", "unit"] = Field("per_channel", description=(
        "`unit`: 8-bit pixels to 0..1; `per_channel`: that, then minus the mean and over the std of each channel "
        "of the training split (kept with the checkpoints); `none`: values as stored"))
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description=(
        "random changes to the training images, drawn anew each epoch (see below)"))
    subset: PositiveInt | None = Field(None, description=(
        "use only the first N training samples in file order (an image folder is read class by class), before "
        "the validation split; the test split is kept whole; null: all"))
    channels: Literal[1, 3] | None = Field(None, description=(
        "`image_folder` only: 1 reads images as greyscale, 3 as RGB; null: the channels of `model.input_shape` "
        "(else those of the first image)"))
    synthetic: SyntheticSpec | None = Field(None, description=(
        "settings of `dataset: synthetic` (see below); null: their defaults"))

    @field_validator("dataset", mode="before")
    @classmethod
    def _one_spelling(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        key = value.strip().lower()
        key = DATASET_ALIASES.get(key, key)
        return key if key in DATASETS else value

    @model_validator(mode="after")
    def _fields_fit_dataset(self) -> "DataSpec":
        if self.synthetic is not None and self.dataset != "synthetic":
            raise ValueError("'synthetic' settings are only used with dataset: synthetic")
        if self.dataset in ("npz", "image_folder") and not self.path:
            raise ValueError(f"dataset: {self.dataset} needs a path")
        return self
