"""The ``data:`` section of a config (pydantic); imports no reader, so the config schema stays light."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator


class AugmentSpec(BaseModel):
    """Training-only augmentation of image batches."""

    model_config = ConfigDict(extra="forbid")

    random_crop_padding: NonNegativeInt = 0
    horizontal_flip: bool = False

    @property
    def active(self) -> bool:
        return self.random_crop_padding > 0 or self.horizontal_flip


class SyntheticSpec(BaseModel):
    """Random class-dependent patterns: each class is a fixed random image plus noise.

    ``shape`` is written as the user writes input shapes (``[H, W, C]``, ``[T, F]``
    or ``[F]``); left out, it follows the model's input shape.
    """

    model_config = ConfigDict(extra="forbid")

    shape: list[PositiveInt] | None = Field(None, min_length=1, max_length=3)
    num_classes: int = Field(10, ge=2)
    train_size: PositiveInt = 1000
    test_size: NonNegativeInt = 200
    noise: float = Field(0.25, ge=0.0)
    seed: NonNegativeInt = 0


class DataSpec(BaseModel):
    """The ``data:`` section of a config.

    ``validation: split`` carves ``validation_split`` of the training set (by the
    seed); ``validation: test`` validates on the test set.  A data set that ships
    its own validation split (``x_val`` in an npz, a ``val/`` image folder) uses it.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["fashion_mnist", "mnist", "cifar10", "npz", "image_folder", "synthetic"]
    path: str | None = None
    validation: Literal["split", "test"] = "split"
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    normalize: Literal["per_channel", "none", "unit"] = "per_channel"
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    subset: PositiveInt | None = None
    channels: Literal[1, 3] | None = None
    synthetic: SyntheticSpec | None = None

    @model_validator(mode="after")
    def _fields_fit_dataset(self) -> "DataSpec":
        if self.synthetic is not None and self.dataset != "synthetic":
            raise ValueError("'synthetic' settings are only used with dataset: synthetic")
        if self.dataset in ("npz", "image_folder") and not self.path:
            raise ValueError(f"dataset: {self.dataset} needs a path")
        return self
