"""The config schema: the pydantic models a config file validates against.

A config is one YAML file with four sections::

    model:   ModelSpec        {input_shape: [H, W, C], layers: [...], blocks: {...}}
    data:    DataSpec         (nettrain.data.spec)
    train:   TrainSpec        (loss, optimizer, schedule, epochs, batch_size, ...)
    output:  OutputSpec       (run directory, which metric picks best.npz, plots)

Layer specs live beside their layers (:mod:`nettrain.layers`); losses,
optimizers and schedules beside their code.  Block definitions (``model.blocks``)
declare parameters with defaults and use them as ``$name`` (the whole value, any
type) or ``${name}`` inside text; :mod:`.sugar` expands them before validation.
"""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    conlist,
    field_validator,
)

from ..data.spec import DataSpec
from ..layers import AnyLayerSpec
from ..losses import LossSpec, SoftmaxCrossEntropySpec
from ..optimizers import AdamSpec, OptimizerSpec
from ..schedules import ConstantSpec, ScheduleSpec
from ..shapes import user_to_internal_shape
from .yamltree import Node, Path, format_path, node_at, where_text

METRIC_NAME = re.compile(r"^(accuracy|top[1-9][0-9]*_accuracy)$")
PARAM_REF = re.compile(r"^\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))$")  # $name or ${name}, the whole value
PARAM_IN_TEXT = re.compile(r"\$\{([A-Za-z_]\w*)\}")
USE_KEYS = ("block", "name", "repeat")  # the keys of a block use besides the block's parameters


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlockSpec(StrictModel):
    """A named group of layers used by name from ``model.layers`` (see :mod:`nettrain.config.sugar`)."""

    params: dict[str, Any] = Field(default_factory=dict)
    layers: list[dict[str, Any]] = Field(min_length=1)


class ModelSpec(StrictModel):
    """``input_shape`` as the user writes it: ``[H, W, C]`` image, ``[T, F]`` sequence or ``[F]`` vector."""

    input_shape: conlist(PositiveInt, min_length=1, max_length=3)
    layers: list[AnyLayerSpec] = Field(min_length=1)
    blocks: dict[str, BlockSpec] = Field(default_factory=dict)

    @property
    def internal_input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for an image, (T, F) for a sequence, (F,) for a vector."""
        return user_to_internal_shape(self.input_shape)


class EarlyStoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    monitor: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    patience: NonNegativeInt = 5
    min_delta: NonNegativeFloat = 0.0


class TrainSpec(StrictModel):
    loss: LossSpec = Field(default_factory=SoftmaxCrossEntropySpec)
    optimizer: OptimizerSpec = Field(default_factory=AdamSpec)
    schedule: ScheduleSpec = Field(default_factory=ConstantSpec)
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    eval_batch_size: Optional[PositiveInt] = None
    seed: NonNegativeInt = 0
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    clip_grad_norm: Optional[PositiveFloat] = None
    early_stopping: Optional[EarlyStoppingSpec] = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log_every: PositiveInt = 50  # steps between progress-bar metric updates

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            if not METRIC_NAME.match(m):
                raise ValueError(f"unknown metric {m!r}; use accuracy or topK_accuracy (e.g. top5_accuracy)")
        return metrics


class OutputSpec(StrictModel):
    """``dir`` left out: ``<root>/<config name>-<timestamp>``; ``monitor``/``mode`` choose best.npz."""

    dir: Optional[str] = None
    root: str = "runs"
    monitor: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    plots: bool = True


class Config(StrictModel):
    """A validated config file; ``source_path``, ``source_text``, ``overrides`` and ``raw`` say where it came from."""

    name: Optional[str] = None
    description: Optional[str] = None
    model: ModelSpec
    data: Optional[DataSpec] = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    _source_path: Optional[FilePath] = PrivateAttr(None)
    _source_text: Optional[str] = PrivateAttr(None)
    _source_name: str = PrivateAttr("<config>")
    _overrides: tuple[str, ...] = PrivateAttr(())
    _raw: Optional[dict] = PrivateAttr(None)
    _tree: Optional[Node] = PrivateAttr(None)

    @property
    def source_path(self) -> FilePath | None:
        """The file the config was read from (None when built from text or a dict)."""
        return self._source_path

    @property
    def source_text(self) -> str | None:
        """The file's text as read, before overrides."""
        return self._source_text

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set path=value`` strings applied, in order."""
        return self._overrides

    @property
    def raw(self) -> dict:
        """The document as written with the overrides applied (blocks and repeat not yet expanded)."""
        return self._raw if self._raw is not None else self.resolved

    @property
    def resolved(self) -> dict:
        """Everything spelled out: sugar expanded, overrides applied, every default filled in.

        This is what a run saves as its ``config.yaml``; it validates back to an equal Config.
        """
        return self.model_dump(mode="json", exclude={"model": {"blocks"}})

    @property
    def run_name(self) -> str:
        """``name:`` if given, else the file's stem, else 'model'."""
        if self.name:
            return self.name
        return self._source_path.stem if self._source_path is not None else "model"

    def to_yaml(self) -> str:
        """The resolved config as YAML text with a header saying where it came from."""
        header = f"# resolved from {self._source_name}"
        for o in self._overrides:
            header += f"\n#   --set {o}"
        return header + "\n" + yaml.safe_dump(self.resolved, sort_keys=False, default_flow_style=None)

    def location(self, path: Path) -> str:
        """``file:line: dotted.path`` of a value in the expanded config (as written, with block notes)."""
        if self._tree is None:
            return format_path(path)
        node, rest = node_at(self._tree, path)
        return where_text(node.where, self._source_name, rest)
