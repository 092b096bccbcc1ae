"""Learning-rate schedules: the learning rate as a function of (epoch, step in epoch).

The trainer sets ``optimizer.lr = schedule.lr_at(epoch, step)`` before every
step and calls ``schedule.on_epoch_end(metrics)`` after every epoch (only
``reduce_on_plateau`` listens). Epochs and steps count from 0.

Every schedule can start with a linear warmup over ``warmup_epochs`` (a
fraction of an epoch is fine): the rate climbs step by step from
``warmup_start_factor * lr`` to the scheduled rate. Large learning rates
diverge in the first steps, while BatchNorm statistics and Adam's moment
estimates are still settling; the warmup avoids that.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    TypeAdapter,
    field_validator,
)

from .errors import CheckpointError, ConfigError, validate_spec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.1, ge=0, le=1)


class ConstantSpec(_Spec):
    """The optimizer's learning rate throughout."""

    type: Literal["constant"] = "constant"


class StepSpec(_Spec):
    """lr * gamma ** (epoch // step_size) (torch StepLR stepped per epoch)."""

    type: Literal["step"] = "step"
    step_size: PositiveInt
    gamma: float = Field(0.1, gt=0)


class MultiStepSpec(_Spec):
    """lr * gamma ** (number of milestones <= epoch) (torch MultiStepLR)."""

    type: Literal["multistep"] = "multistep"
    milestones: list[PositiveInt] = Field(min_length=1)
    gamma: float = Field(0.1, gt=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(a >= b for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be strictly increasing epochs, e.g. [30, 60, 90]")
        return v


class CosineSpec(_Spec):
    """Half a cosine from lr down to min_lr over the epochs after the warmup.

    ``per_step: true`` moves the rate every step; ``false`` once per epoch
    (torch CosineAnnealingLR stepped per epoch).
    """

    type: Literal["cosine"] = "cosine"
    min_lr: float = Field(0.0, ge=0)
    per_step: bool = True


class ReduceOnPlateauSpec(_Spec):
    """Multiply the rate by ``factor`` when ``monitor`` stops improving (torch ReduceLROnPlateau).

    An epoch improves on the best value when it beats it by more than
    ``threshold`` relative (best * (1 -/+ threshold)); after more than
    ``patience`` epochs without improvement the rate drops, then the count
    waits ``cooldown`` epochs before it starts again.
    """

    type: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)
    cooldown: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


def _name_to_mapping(value):
    # A bare name (``schedule: cosine``) is shorthand for ``{type: cosine}``.
    return {"type": value} if isinstance(value, str) else value


ScheduleSpec = Annotated[
    Union[ConstantSpec, StepSpec, MultiStepSpec, CosineSpec, ReduceOnPlateauSpec],
    Field(discriminator="type"),
    BeforeValidator(_name_to_mapping),
]
_SCHEDULE_ADAPTER = TypeAdapter(ScheduleSpec)


def parse_schedule(value, where: str = "schedule") -> ScheduleSpec:
    """Validate a schedule given as None (constant), a name, a mapping or a spec."""
    return validate_spec(_SCHEDULE_ADAPTER, ConstantSpec() if value is None else value, where)


class Schedule:
    """lr_at(epoch, step) = scheduled_lr(epoch, global step) * warmup_factor(global step)."""

    def __init__(self, spec: _Spec, base_lr: float, epochs: int, steps_per_epoch: int):
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"a schedule needs epochs and steps_per_epoch >= 1, got {epochs} and {steps_per_epoch}")
        self.spec = spec
        self.base_lr = float(base_lr)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = max(1, round(spec.warmup_epochs * steps_per_epoch)) if spec.warmup_epochs else 0

    def lr_at(self, epoch: int, step_in_epoch: int = 0) -> float:
        step = epoch * self.steps_per_epoch + step_in_epoch
        return self.scheduled_lr(epoch, step) * self.warmup_factor(step)

    def warmup_factor(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        start = self.spec.warmup_start_factor
        return start + (1.0 - start) * step / self.warmup_steps

    def scheduled_lr(self, epoch: int, step: int) -> float:
        return self.base_lr

    def on_epoch_end(self, metrics: dict[str, float]) -> None:
        """Called once after each epoch with that epoch's metrics."""

    def state_dict(self) -> dict[str, np.ndarray]:
        # The rate is a pure function of (epoch, step) for all but the plateau schedule.
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pass


class StepDecay(Schedule):
    def scheduled_lr(self, epoch, step):
        return self.base_lr * self.spec.gamma ** (epoch // self.spec.step_size)


class MultiStepDecay(Schedule):
    def scheduled_lr(self, epoch, step):
        return self.base_lr * self.spec.gamma ** bisect_right(self.spec.milestones, epoch)


class CosineDecay(Schedule):
    def scheduled_lr(self, epoch, step):
        t = step if self.spec.per_step else epoch * self.steps_per_epoch
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((t - self.warmup_steps) / span, 0.0), 1.0)
        lo = self.spec.min_lr
        return lo + (self.base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ReduceOnPlateau(Schedule):
    def __init__(self, *args):
        super().__init__(*args)
        self.lr = self.base_lr
        self.best = math.inf if self.spec.mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def scheduled_lr(self, epoch, step):
        return self.lr

    def improves(self, value: float) -> bool:
        s = self.spec
        if s.mode == "min":
            return value < self.best * (1.0 - s.threshold)
        return value > self.best * (1.0 + s.threshold)

    def on_epoch_end(self, metrics: dict[str, float]) -> None:
        s = self.spec
        if s.monitor not in metrics:
            raise ConfigError(
                f"schedule.monitor: metric '{s.monitor}' is not computed; "
                f"set it to one of {sorted(metrics)}"
            )
        value = float(metrics[s.monitor])
        if self.improves(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > s.patience:
            self.lr = max(self.lr * s.factor, s.min_lr)
            self.cooldown_left, self.bad_epochs = s.cooldown, 0

    def state_dict(self):
        return {
            "lr": np.array(self.lr),
            "best": np.array(self.best),
            "bad_epochs": np.array(self.bad_epochs),
            "cooldown_left": np.array(self.cooldown_left),
        }

    def load_state_dict(self, state):
        try:
            self.lr, self.best = float(state["lr"]), float(state["best"])
            self.bad_epochs, self.cooldown_left = int(state["bad_epochs"]), int(state["cooldown_left"])
        except KeyError as e:
            raise CheckpointError(f"schedule state lacks {e}; was it saved with another schedule?") from None


_SCHEDULES: dict[type[_Spec], type[Schedule]] = {
    ConstantSpec: Schedule,
    StepSpec: StepDecay,
    MultiStepSpec: MultiStepDecay,
    CosineSpec: CosineDecay,
    ReduceOnPlateauSpec: ReduceOnPlateau,
}


def build_schedule(spec, base_lr: float, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule for a spec (or None / name / mapping) over ``epochs`` of ``steps_per_epoch`` steps."""
    spec = parse_schedule(spec)
    return _SCHEDULES[type(spec)](spec, base_lr, epochs, steps_per_epoch)
