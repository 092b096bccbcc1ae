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

    input_shape: conlist(PositiveInt, min_length=1, max_length=3) = Field(description=(
        "one sample without the batch axis: `[H, W, C]` image, `[T, F]` sequence (T timesteps of F features) "
        "or `[F]` vector"))
    layers: list[AnyLayerSpec] = Field(min_length=1, description=(
        "the layers in order (see Layers); block uses and `repeat: n` are allowed"))
    blocks: dict[str, BlockSpec] = Field(default_factory=dict, description=(
        "named groups of layers with parameters, used from `layers` (see Blocks)"))

    @property
    def internal_input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for an image, (T, F) for a sequence, (F,) for a vector."""
        return user_to_internal_shape(self.input_shape)


class EarlyStoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    monitor: str = Field("val_accuracy", description=(
        "the metric watched: `train_loss`, `train_accuracy`, `val_loss`, `val_accuracy` or `val_topK_accuracy`"))
    mode: Literal["min", "max"] = Field("max", description="`max`: higher is better; `min`: lower is better")
    patience: NonNegativeInt = Field(5, description=(
        "epochs in a row without improvement after which training stops; 0: the first such epoch"))
    min_delta: NonNegativeFloat = Field(0.0, description=(
        "an epoch improves only when it beats the best value so far by more than this"))


class DistributedSpec(StrictModel):
    """Data-parallel training over MPI (``mpiexec -n N nettrain train``); ignored by a single process."""

    sync_batchnorm: bool = Field(True, description=(
        "BatchNorm normalizes with the statistics of the whole global batch, summed over the ranks, so N ranks "
        "train as one process would; `false`: each rank uses its own slice's statistics (as PyTorch DDP does)"))


class TrainSpec(StrictModel):
    """How to train: loss, optimizer, schedule, epochs, batches, seed and safeguards."""

    loss: LossSpec = Field(default_factory=SoftmaxCrossEntropySpec, description="the loss (see below)")
    optimizer: OptimizerSpec = Field(default_factory=AdamSpec, description="the optimizer and its learning rate")
    schedule: ScheduleSpec = Field(default_factory=ConstantSpec, description="the learning-rate schedule")
    epochs: PositiveInt = Field(10, description="passes over the training split")
    batch_size: PositiveInt = Field(64, description=(
        "samples per training step; the last batch of an epoch may be smaller"))
    eval_batch_size: Optional[PositiveInt] = Field(None, description=(
        "samples per step when evaluating the validation and test splits; null: `batch_size`"))
    seed: NonNegativeInt = Field(0, description=(
        "seeds the initial weights, the validation split, the batch order, augmentation and dropout"))
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"], description=(
        "`accuracy` and `topK_accuracy` (e.g. `top5_accuracy`), computed for every split"))
    clip_grad_norm: Optional[PositiveFloat] = Field(None, description=(
        "scale the gradients down when their global L2 norm exceeds this; null: no clipping"))
    early_stopping: Optional[EarlyStoppingSpec] = Field(None, description=(
        "stop when a metric stops improving (see below); null: train every epoch"))
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description=(
        "a step whose loss or gradients are not finite: `stop` ends the run with an error naming the step and "
        "the first layer (or parameter gradient) that went non-finite; `skip` drops the step as if it never ran"))
    log_every: PositiveInt = Field(50, description=(
        "steps between updates of the loss and accuracy shown on the progress bar, or between progress "
        "lines when stdout is not a terminal (nohup, CI logs)"))
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description=(
        "data-parallel training over MPI (see below); `train.batch_size` is the global batch"))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            if not METRIC_NAME.match(m):
                raise ValueError(f"unknown metric {m!r}; use accuracy or topK_accuracy (e.g. top5_accuracy)")
        return metrics


class OutputSpec(StrictModel):
    """``dir`` left out: ``<root>/<config name>-<timestamp>``; ``monitor``/``mode`` choose best.npz."""

    dir: Optional[str] = Field(None, description="the run folder; null: `<root>/<name>-<timestamp>`")
    root: str = Field("runs", description="where run folders go when `dir` is null")
    monitor: str = Field("val_accuracy", description=(
        "the metric that picks the epoch saved as `best.npz` (a column of `metrics.csv`, as for early stopping)"))
    mode: Literal["min", "max"] = Field("max", description="`max`: higher `monitor` is better; `min`: lower")
    plots: bool = Field(True, description="draw `curves.png` (loss and accuracy per epoch; needs matplotlib)")
    tensorboard: bool = Field(False, description="write TensorBoard event files into `RUN/tensorboard/` "
                              "(needs `pip install 'nettrain[tensorboard]'`)")
    histograms_every: Optional[PositiveInt] = Field(None, description="epochs between weight and gradient "
                                                    "histograms in the TensorBoard logs; null: none")


class Config(StrictModel):
    """A validated config file; ``source_path``, ``source_text``, ``overrides`` and ``raw`` say where it came from."""

    name: Optional[str] = Field(None, description="names the run folder; null: the config file's name")
    description: Optional[str] = Field(None, description="free text (kept in the run's config.yaml)")
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
